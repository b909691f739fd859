"""The ISTA family (engines/imaging/ista.py) and the sparse-coding benchmark (engines/sparse_problem.py).

The seed's "coincides" statements are tests here: every learned module, at its
initialization, reproduces the model-based iterations layer by layer (float64, to rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso

import engines
from engines.base import Engine
from engines.errors import BackendUnavailable, EngineError, EngineInputError
from engines.imaging.ista import (
    ALISTA,
    CPSS,
    FISTA,
    ISTA,
    LISTA,
    LISTACP,
    IstaLayer,
    SupportSelection,
    TunedISTA,
    coherence_minimizing_weight,
    default_step,
    ista_step,
    warm_start_from_alista,
)
from engines.ops import Convolution2d, soft_threshold, spectral_norm
from engines.sparse_problem import SparseCodingEngine, SparseProblem, nmse_db, sensing_matrix

torch.set_num_threads(1)
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small():
    """A 50 x 100 instance of the benchmark and 6 noisy observations."""
    problem = SparseProblem.standard(seed=5, m=50, n=100, snr_db=30.0)
    return problem, problem.sample(6, gen(1))


def lasso_objective(H, x, s, rho):
    return 0.5 * ((x - s @ H.mT) ** 2).sum(-1) + rho * s.abs().sum(-1)


def assert_iterates_equal(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-12):
    assert len(a) == len(b)
    for k, (sa, sb) in enumerate(zip(a, b, strict=True)):
        assert (sa - sb).abs().max() <= atol, f"iterate {k} differs by {(sa - sb).abs().max():.3g}"


# --- the benchmark problem ------------------------------------------------------------

def test_sensing_matrix_has_unit_norm_columns_and_is_fixed_by_the_seed():
    H = sensing_matrix(250, 500, seed=0)
    assert H.shape == (250, 500) and H.dtype == F64
    torch.testing.assert_close(torch.linalg.vector_norm(H, dim=0), torch.ones(500, dtype=F64))
    assert torch.equal(H, sensing_matrix(250, 500, seed=0))
    assert not torch.equal(H, sensing_matrix(250, 500, seed=1))
    assert torch.equal(sensing_matrix(250, 500, 0, dtype=torch.float32), H.float())
    # before normalization the entries are N(0, 1/m): the normalized ones have variance 1/m
    assert H.var().item() == pytest.approx(1 / 250, rel=0.01)


def test_problem_codes_are_bernoulli_gaussian_with_rate_one_tenth():
    batch = SparseProblem.standard().sample(1000, gen(0))
    assert batch.s.shape == (1000, 500) and batch.x.shape == (1000, 250)
    rate = (batch.s != 0).double().mean().item()
    assert rate == pytest.approx(0.1, abs=0.003)
    nonzero = batch.s[batch.s != 0]
    assert nonzero.mean().item() == pytest.approx(0.0, abs=0.02)
    assert nonzero.std().item() == pytest.approx(1.0, abs=0.02)


def test_noiseless_observations_are_H_s():
    problem = SparseProblem.standard()
    batch = problem.sample(10, gen(0))
    torch.testing.assert_close(batch.x, batch.s @ problem.H.mT, rtol=0, atol=0)


@pytest.mark.parametrize("snr_db", [40.0, 30.0, 20.0])
def test_noise_has_the_requested_snr(snr_db):
    problem = SparseProblem.standard(snr_db=snr_db)
    g1, g2 = gen(3), gen(3)
    noisy = problem.sample(500, g1)
    clean = SparseProblem(H=problem.H).sample(500, g2)  # same draws of s, then the noise
    assert torch.equal(noisy.s, clean.s)
    noise = noisy.x - clean.x
    measured = 10 * torch.log10(clean.x.var(dim=1, correction=0) / noise.pow(2).mean(dim=1))
    assert measured.mean().item() == pytest.approx(snr_db, abs=0.1)


def test_sampling_is_reproducible_from_the_generator():
    problem = SparseProblem.standard(snr_db=20.0)
    a, b = problem.sample(4, gen(9)), problem.sample(4, gen(9))
    assert torch.equal(a.s, b.s) and torch.equal(a.x, b.x)


def test_nmse_db_is_the_ratio_of_total_error_to_total_energy():
    s = torch.randn(20, 30, generator=gen(0), dtype=F64)
    assert nmse_db(torch.zeros_like(s), s) == pytest.approx(0.0, abs=1e-12)
    assert nmse_db(1.1 * s, s) == pytest.approx(-20.0, abs=1e-9)
    s_hat = s + torch.randn(20, 30, generator=gen(1), dtype=F64)
    ratio = ((s_hat - s) ** 2).sum() / (s**2).sum()
    assert nmse_db(s_hat, s) == pytest.approx(10 * np.log10(ratio.item()))


# --- the step and model-based ISTA / FISTA --------------------------------------------

def test_ista_layer_is_seed_eq_15(small):
    problem, batch = small
    H, x = problem.H, batch.x
    ista = ISTA(H, rho=0.2, n_iter=1)
    s = torch.randn(6, 100, generator=gen(2), dtype=F64)
    mu = ista.mu
    expected = soft_threshold(s + mu * (x - s @ H.mT) @ H, mu * 0.2)  # T_{mu rho}(s + mu H'(x - H s))
    torch.testing.assert_close(ista_step(s, x, ista.layer(0)), expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(ista(x, s0=s), expected, rtol=0, atol=1e-13)


def test_default_step_is_one_over_1001_times_squared_spectral_norm():
    H = sensing_matrix(250, 500, seed=0)
    exact = float(torch.linalg.matrix_norm(H, ord=2))
    assert default_step(H) == pytest.approx(1 / (1.001 * exact**2), rel=1e-8)
    assert default_step(H) * exact**2 < 1  # a valid ISTA step


@pytest.mark.parametrize("solver", [ISTA, FISTA])
def test_converges_to_the_sklearn_lasso_minimizer(small, solver):
    problem, batch = small
    H, rho = problem.H, 0.1
    m = H.shape[0]
    s = solver(H, rho=rho, n_iter=3000)(batch.x)
    for i in range(batch.x.shape[0]):
        # sklearn: (1 / (2 m)) ||x - H s||^2 + alpha ||s||_1, the same minimizer for alpha = rho / m
        ref = Lasso(alpha=rho / m, fit_intercept=False, tol=1e-12, max_iter=100_000)
        ref.fit(H.numpy(), batch.x[i].numpy())
        np.testing.assert_allclose(s[i].numpy(), ref.coef_, rtol=0, atol=1e-6)


def test_fista_decreases_the_objective_faster_than_ista(small):
    problem, batch = small
    f_ista = lasso_objective(problem.H, batch.x, ISTA(problem.H, rho=0.1, n_iter=50)(batch.x), 0.1)
    f_fista = lasso_objective(problem.H, batch.x, FISTA(problem.H, rho=0.1, n_iter=50)(batch.x), 0.1)
    assert (f_fista < f_ista).all()


def test_ista_is_monotone_in_the_lasso_objective(small):
    problem, batch = small
    iterates = ISTA(problem.H, rho=0.1, n_iter=30)(batch.x, return_all=True)
    f = torch.stack([lasso_objective(problem.H, batch.x, s, 0.1) for s in iterates[1:]])
    assert (f[1:] <= f[:-1] + 1e-12).all()


def test_return_all_gives_k_plus_one_iterates_from_zero(small):
    problem, batch = small
    iterates = FISTA(problem.H, n_iter=7)(batch.x, return_all=True)
    assert len(iterates) == 8 and torch.count_nonzero(iterates[0]) == 0
    torch.testing.assert_close(iterates[-1], FISTA(problem.H, n_iter=7)(batch.x), rtol=0, atol=0)


def test_ista_on_a_blur_operator_equals_ista_on_its_matrix():
    r = torch.arange(5, dtype=F64) - 2
    psf = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 2)
    A = Convolution2d(psf / psf.sum(), (12, 10))
    s = torch.zeros(2, 12, 10, dtype=F64)
    s[0, 3, 4], s[1, 7, 2], s[1, 8, 8] = 1.0, -2.0, 1.5
    x = A(s)
    mu = default_step(A)
    images = FISTA(A, rho=0.01, n_iter=40, mu=mu)(x)
    vectors = FISTA(A.matrix(), rho=0.01, n_iter=40, mu=mu)(x.reshape(2, -1))
    assert images.shape == (2, 12, 10)
    torch.testing.assert_close(images.reshape(2, -1), vectors, rtol=0, atol=1e-12)


# --- "coincides": learned modules at their initialization reproduce ISTA --------------

def test_lista_initialized_at_ista_values_reproduces_ista(small):
    problem, batch = small
    ista = ISTA(problem.H, rho=0.1, n_iter=16)
    lista = LISTA(problem.H, n_layers=16, rho=0.1)
    assert_iterates_equal(lista(batch.x, return_all=True), ista(batch.x, return_all=True))


def test_lista_cp_initialized_at_ista_values_reproduces_ista(small):
    problem, batch = small
    ista = ISTA(problem.H, rho=0.1, n_iter=16)
    assert_iterates_equal(LISTACP(problem.H, 16, rho=0.1)(batch.x, return_all=True),
                          ista(batch.x, return_all=True))


def test_alista_with_W_equal_H_and_gamma_one_over_L_reproduces_ista(small):
    problem, batch = small
    ista = ISTA(problem.H, rho=0.1, n_iter=16)
    alista = ALISTA(problem.H, 16, rho=0.1, W=problem.H, support=None)
    gamma0 = torch.full((16,), ista.mu, dtype=F64)  # 1 / (1.001 ||W'H||) = 1 / L for W = H
    torch.testing.assert_close(alista.gamma.detach(), gamma0, rtol=1e-8, atol=0)
    alista = ALISTA(problem.H, 16, rho=0.1, W=problem.H, mu=ista.mu, support=None)
    assert_iterates_equal(alista(batch.x, return_all=True), ista(batch.x, return_all=True))


@pytest.mark.parametrize("support", [None, CPSS], ids=["no-ss", "ss"])
def test_lista_and_lista_cp_warm_started_from_a_trained_alista_reproduce_it(small, support):
    problem, batch = small
    alista = ALISTA(problem.H, 8, rho=0.1, support=support)
    with torch.no_grad():  # "trained": distinct per-layer values
        alista.gamma.mul_(torch.linspace(0.8, 1.3, 8, dtype=F64))
        alista.theta.mul_(torch.linspace(1.2, 0.5, 8, dtype=F64))
    expected = alista(batch.x, return_all=True)
    for model in (LISTA(problem.H, 8, support=support), LISTACP(problem.H, 8, support=support)):
        warm_start_from_alista(model, alista)
        assert_iterates_equal(model(batch.x, return_all=True), expected, atol=1e-10)
    with pytest.raises(ValueError, match="layer counts"):
        warm_start_from_alista(LISTA(problem.H, 4), alista)


def test_tuned_ista_at_its_initialization_reproduces_ista(small):
    problem, batch = small
    assert_iterates_equal(TunedISTA(problem.H, rho=0.1, n_iter=50)(batch.x, return_all=True),
                          ISTA(problem.H, rho=0.1, n_iter=50)(batch.x, return_all=True))


def test_learned_modules_initialize_thresholds_at_the_anchor_theta0():
    H = sensing_matrix(60, 120, seed=2)
    theta0 = 0.4 / (1.001 * float(torch.linalg.matrix_norm(H, ord=2)) ** 2)
    for net in (LISTA(H, 3), LISTACP(H, 3)):
        torch.testing.assert_close(net.theta.detach(), torch.full((3,), theta0, dtype=F64), rtol=1e-8, atol=0)


def test_per_layer_parameters_are_used_layer_by_layer(small):
    problem, batch = small
    lista = LISTA(problem.H, n_layers=3, rho=0.1)
    with torch.no_grad():
        lista.theta[1] = 0.5
        lista.W2[2] *= 0.5
    s = batch.x.new_zeros(6, 100)
    for k in range(3):
        s = ista_step(s, batch.x, IstaLayer(W1=lambda v, k=k: v @ lista.W1[k].mT,
                                              W2=lambda v, k=k: v @ lista.W2[k].mT, theta=lista.theta[k]))
    torch.testing.assert_close(lista(batch.x), s, rtol=0, atol=1e-13)


# --- ALISTA's analytic weight ---------------------------------------------------------

def projected_gradient_weight(H: torch.Tensor, steps: int = 3000) -> torch.Tensor:
    """min ||W'H||_F^2 s.t. diag(W'H) = 1 by projected gradient descent (Liu et al.'s route)."""
    W = H.clone()
    step = 1 / (2 * float(torch.linalg.matrix_norm(H, ord=2)) ** 2)
    col2 = (H * H).sum(0)
    for _ in range(steps):
        W = W - step * 2 * (H @ H.mT) @ W  # gradient of ||W'H||_F^2 = 2 H H' W
        W = W - H * (((W * H).sum(0) - 1) / col2)  # project each column on h_i'w_i = 1
    return W


def test_alista_weight_is_the_coherence_minimizer_with_unit_diagonal():
    H = sensing_matrix(20, 40, seed=4)
    W = coherence_minimizing_weight(H)
    torch.testing.assert_close((W.mT @ H).diagonal(), torch.ones(40, dtype=F64), rtol=0, atol=1e-12)
    torch.testing.assert_close(W, projected_gradient_weight(H), rtol=0, atol=1e-8)
    assert torch.linalg.matrix_norm(W.mT @ H) < torch.linalg.matrix_norm(H.mT @ H)  # W = H is feasible
    # KKT: the gradient 2 G w_i of each column is parallel to the constraint's normal h_i
    G_W = H @ H.mT @ W
    scale = (G_W * H).sum(0) / (H * H).sum(0)
    torch.testing.assert_close(G_W, H * scale, rtol=0, atol=1e-10)


def test_alista_learns_only_2k_parameters():
    alista = ALISTA(sensing_matrix(30, 60, seed=1), n_layers=5)
    assert sum(p.numel() for p in alista.parameters() if p.requires_grad) == 10
    assert not alista.W.requires_grad


# --- support selection ------------------------------------------------------------------

def test_support_selection_schedule_grows_1_2_percent_per_layer_up_to_13_percent():
    q = [CPSS.q(k) for k in range(16)]
    assert q[0] == pytest.approx(0.012) and q[4] == pytest.approx(0.06)
    assert q[10] == pytest.approx(0.13) and q[15] == pytest.approx(0.13)
    assert all(b >= a for a, b in zip(q, q[1:], strict=False))


def test_lista_cpss_layer_lets_the_largest_entries_skip_the_shrinkage(small):
    problem, batch = small
    net = LISTACP(problem.H, n_layers=16, rho=0.1, support=SupportSelection(q_step=0.05, q_max=0.05))
    s = torch.randn(6, 100, generator=gen(3), dtype=F64)
    layer = net.layer(0)
    z = layer.W1(batch.x) + layer.W2(s)
    out = ista_step(s, batch.x, layer)
    top = z.abs().topk(5, dim=-1).indices
    torch.testing.assert_close(out.gather(-1, top), z.gather(-1, top))  # 5 % of 100 pass unchanged
    rest = torch.ones_like(z, dtype=torch.bool).scatter(-1, top, False)
    torch.testing.assert_close(out[rest], soft_threshold(z, net.theta[0])[rest])


# --- learning ---------------------------------------------------------------------------

def learned_modules(H):
    return {
        "LISTA": LISTA(H, 4, rho=0.1),
        "LISTA-SS": LISTA(H, 4, rho=0.1, support=CPSS),
        "LISTA-CP": LISTACP(H, 4, rho=0.1),
        "LISTA-CPSS": LISTACP(H, 4, rho=0.1, support=CPSS),
        "ALISTA": ALISTA(H, 4, rho=0.1),
        "TunedISTA": TunedISTA(H, rho=0.1, n_iter=10),
    }


@pytest.mark.parametrize("name", list(learned_modules(sensing_matrix(5, 10))))
def test_gradients_reach_every_learned_parameter(small, name):
    problem, batch = small
    net = learned_modules(problem.H)[name]
    loss = ((net(batch.x) - batch.s) ** 2).sum()
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_tiny_lista_trained_100_adam_steps_beats_ista_at_the_same_depth():
    torch.manual_seed(0)
    problem = SparseProblem.standard(seed=3, m=20, n=40, dtype=torch.float32)
    test = problem.sample(1000, gen(1))
    lista = LISTA(problem.H, n_layers=4, rho=0.1)
    optimizer = torch.optim.Adam(lista.parameters(), lr=3e-3)
    train = gen(2)
    for _ in range(100):
        batch = problem.sample(64, train)
        loss = ((lista(batch.x) - batch.s) ** 2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nmse_ista = nmse_db(ISTA(problem.H, rho=0.1, n_iter=4)(test.x), test.s)
        nmse_lista = nmse_db(lista(test.x), test.s)
    assert nmse_lista < nmse_ista - 2.0, (nmse_lista, nmse_ista)


# --- engines ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, solver", [("ista", ISTA), ("fista", FISTA)])
def test_engine_runs_the_model_based_solver_on_the_benchmark_matrix(name, solver):
    engine = engines.load(name, seed=1, n_iter=8, rho=0.2)
    assert isinstance(engine, Engine) and isinstance(engine, SparseCodingEngine)
    assert engine.info.name == name and engine.info.family == "model-based"
    assert engine.info.task == "sparse-coding" and engine.info.backend == "torch"
    assert engine.info.in_shape == (250,) and engine.info.out_shape == (500,) and engine.info.n_params == 0
    H = sensing_matrix(250, 500, seed=1)
    np.testing.assert_array_equal(engine.operator, H.numpy())
    batch = SparseProblem(H=H).sample(3, gen(0))
    out = engine(batch.x.numpy())
    assert out.shape == (3, 500) and out.dtype == np.float32
    ref = solver(H, rho=0.2, n_iter=8)(batch.x)
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-4)


def test_engine_rejects_bad_input_and_backends():
    engine = engines.load("ista", m=20, n=40)
    with pytest.raises(EngineInputError, match="ista"):
        engine(np.zeros((2, 21)))
    with pytest.raises(EngineInputError, match="non-finite"):
        engine(np.full((1, 20), np.nan))
    with pytest.raises(BackendUnavailable):
        engines.load("fista", backend="onnxruntime")
    with pytest.raises(EngineError, match="unknown parameter"):
        engines.load("ista", lambda_=0.4)


def test_spectral_norm_of_the_benchmark_matrix_is_close_to_1_plus_sqrt_2():
    # Marchenko-Pastur edge for a 250 x 500 matrix of variance 1/250: 1 + sqrt(500/250)
    assert spectral_norm(sensing_matrix()) == pytest.approx(1 + np.sqrt(2), rel=0.05)
