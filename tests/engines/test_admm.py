"""The ADMM family (engines/imaging/admm.py): Algorithm 1 of the seed and its learned forms.

The seed's "coincides" statements (Examples 14-16) are tests: each learned module at its
initialization reproduces model-based ADMM iteration by iteration (float64, to rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import Lasso
from torch import nn

import engines
from engines.base import Engine
from engines.errors import BackendUnavailable, EngineInputError
from engines.imaging.admm import (
    ADMM,
    AdmmLayer,
    AdmmState,
    L1Prox,
    LearnedADMM,
    RegularizedInverse,
    UnfoldedADMM,
    UnfoldedADMMWeights,
    admm_step,
)
from engines.load import accepted_params
from engines.ops import BlurDownsample, soft_threshold
from engines.sparse_problem import SparseProblem, sensing_matrix

torch.set_num_threads(1)
F64 = torch.float64
RHO = 0.1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def small():
    """A 50 x 100 instance of the benchmark and 6 noisy observations."""
    problem = SparseProblem.standard(seed=5, m=50, n=100, snr_db=30.0)
    return problem, problem.sample(6, gen(1))


def assert_iterates_equal(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-12):
    assert len(a) == len(b)
    for k, (sa, sb) in enumerate(zip(a, b, strict=True)):
        assert (sa - sb).abs().max() <= atol, f"iterate {k} differs by {(sa - sb).abs().max():.3g}"


def algorithm_1(H, x, rho, lam, mu, n_iter):
    """Seed Algorithm 1 for the lasso, written out with explicit solves (the reference)."""
    n = H.shape[1]
    M = H.mT @ H + 2 * lam * torch.eye(n, dtype=H.dtype)
    v = u = x.new_zeros(x.shape[0], n)
    iterates = [v]
    for _ in range(n_iter):
        # s = (H'H + 2 lam I)^-1 (H'x + 2 lam (v - u))
        s = torch.linalg.solve(M, (x @ H + 2 * lam * (v - u)).mT).mT
        v = soft_threshold(s + u, rho / (2 * lam))  # prox_{phi / (2 lam)}, phi = rho ||.||_1
        u = u + mu * (s - v)
        iterates.append(s)
    return iterates


# --- model-based ADMM -----------------------------------------------------------------

def test_admm_iterates_are_seed_algorithm_1(small):
    problem, batch = small
    admm = ADMM(problem.H, prox=L1Prox(RHO), lam=0.3, mu=1.2, n_iter=20)
    assert_iterates_equal(admm(batch.x, return_all=True), algorithm_1(problem.H, batch.x, RHO, 0.3, 1.2, 20))


@pytest.mark.parametrize("lam", [0.01, 0.5, 7.0])
def test_regularized_inverse_is_the_exact_s_update(small, lam):
    problem, batch = small
    H = problem.H
    M = H.mT @ H + 2 * lam * torch.eye(100, dtype=F64)
    z = torch.randn(6, 100, generator=gen(2), dtype=F64)
    inverse = RegularizedInverse(H)
    torch.testing.assert_close(inverse.W1(lam)(batch.x), torch.linalg.solve(M, H.mT @ batch.x.mT).mT,
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(inverse.W2(lam)(z), 2 * lam * torch.linalg.solve(M, z.mT).mT,
                               rtol=0, atol=1e-10)


def test_admm_step_uses_the_layer_parameters_it_is_given():
    x = torch.tensor([[1.0, 2.0]], dtype=F64)
    state = AdmmState(s=torch.zeros(1, 2, dtype=F64), v=torch.tensor([[0.5, -1.0]], dtype=F64),
                      u=torch.tensor([[0.25, 0.0]], dtype=F64))
    layer = AdmmLayer(W1=lambda x: 2 * x, W2=lambda z: -z, lam=0.25, mu=0.5, prox=L1Prox(1.0))
    out = admm_step(state, x, layer)
    s = 2 * x - (state.v - state.u)  # [[1.75, 5.0]]
    v = soft_threshold(s + state.u, 1.0 / (2 * 0.25))  # threshold rho / (2 lambda) = 2
    torch.testing.assert_close(out.s, s)
    torch.testing.assert_close(out.v, v)
    torch.testing.assert_close(out.u, state.u + 0.5 * (s - v))


@pytest.mark.parametrize("lam, mu", [(0.5, 1.0), (0.1, 1.5), (2.0, 0.7)])
def test_admm_converges_to_the_sklearn_lasso_minimizer(small, lam, mu):
    problem, batch = small
    H = problem.H
    m = H.shape[0]
    s = ADMM(H, prox=L1Prox(RHO), lam=lam, mu=mu, n_iter=3000)(batch.x)
    for i in range(batch.x.shape[0]):
        # sklearn: (1 / (2 m)) ||x - H s||^2 + alpha ||s||_1, the same minimizer for alpha = rho / m
        ref = Lasso(alpha=RHO / m, fit_intercept=False, tol=1e-12, max_iter=100_000)
        ref.fit(H.numpy(), batch.x[i].numpy())
        np.testing.assert_allclose(s[i].numpy(), ref.coef_, rtol=0, atol=1e-6)


def test_a_plugged_in_prox_changes_the_objective_nonnegative_lasso(small):
    problem, batch = small
    H = problem.H
    m = H.shape[0]

    def nonnegative_l1(z, tau):  # prox of tau (rho ||.||_1 + indicator of s >= 0)
        return torch.relu(z - tau * RHO)

    s = ADMM(H, prox=nonnegative_l1, n_iter=3000)(batch.x)
    for i in range(3):
        ref = Lasso(alpha=RHO / m, fit_intercept=False, positive=True, tol=1e-12, max_iter=100_000)
        ref.fit(H.numpy(), batch.x[i].numpy())
        np.testing.assert_allclose(s[i].numpy(), ref.coef_, rtol=0, atol=1e-6)


def test_a_module_prox_is_a_submodule_of_the_solver(small):
    problem, _ = small

    class ScaledShrink(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0, dtype=F64))

        def forward(self, z, tau):
            return self.scale * soft_threshold(z, tau * RHO)

    admm = ADMM(problem.H, prox=ScaledShrink())
    assert [name for name, _ in admm.named_parameters()] == ["prox.scale"]


def test_admm_accepts_a_blur_downsample_operator():
    r = torch.arange(5, dtype=F64) - 2
    psf = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / 2)
    A = BlurDownsample(psf / psf.sum(), (8, 8), factor=2)
    s = torch.zeros(2, 64, dtype=F64)
    s[0, 9], s[1, 30] = 1.0, 2.0
    x = A(s.reshape(2, 8, 8)).reshape(2, -1)
    out = ADMM(A, prox=L1Prox(1e-3), n_iter=50)(x)
    expected = ADMM(A.matrix(), prox=L1Prox(1e-3), n_iter=50)(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert out.shape == (2, 64)


def test_admm_rejects_nonpositive_hyperparameters(small):
    for make in (ADMM, LearnedADMM, UnfoldedADMM):
        with pytest.raises(ValueError, match="positive"):
            make(small[0].H, lam=0.0)


# --- "coincides": learned and unfolded ADMM at their initialization reproduce ADMM ----

def test_learned_admm_at_its_initialization_reproduces_admm(small):
    problem, batch = small
    admm = ADMM(problem.H, prox=L1Prox(RHO), lam=0.3, mu=1.2, n_iter=100)
    learned = LearnedADMM(problem.H, prox=L1Prox(RHO), lam=0.3, mu=1.2, n_iter=100)
    assert_iterates_equal(learned(batch.x, return_all=True), admm(batch.x, return_all=True))


def test_unfolded_admm_with_equal_lambda_k_mu_k_reproduces_admm(small):
    problem, batch = small
    admm = ADMM(problem.H, prox=L1Prox(RHO), lam=0.3, mu=1.2, n_iter=16)
    unfolded = UnfoldedADMM(problem.H, n_layers=16, prox=L1Prox(RHO), lam=0.3, mu=1.2)
    assert_iterates_equal(unfolded(batch.x, return_all=True), admm(batch.x, return_all=True))


def test_unfolded_admm_with_W1_W2_at_model_based_values_reproduces_admm(small):
    problem, batch = small
    admm = ADMM(problem.H, prox=L1Prox(RHO), lam=0.3, mu=1.2, n_iter=16)
    unfolded = UnfoldedADMMWeights(problem.H, n_layers=16, prox=L1Prox(RHO), lam=0.3, mu=1.2)
    assert_iterates_equal(unfolded(batch.x, return_all=True), admm(batch.x, return_all=True), atol=1e-11)


def test_unfolded_admm_uses_lambda_k_and_mu_k_in_layer_k(small):
    problem, batch = small
    unfolded = UnfoldedADMM(problem.H, n_layers=2, prox=L1Prox(RHO))
    with torch.no_grad():
        unfolded.log_lam.copy_(torch.tensor([0.2, 3.0], dtype=F64).log())
        unfolded.log_mu.copy_(torch.tensor([1.4, 0.6], dtype=F64).log())
    state = AdmmState(*(batch.x.new_zeros(6, 100),) * 3)
    for lam, mu in ((0.2, 1.4), (3.0, 0.6)):
        state = admm_step(state, batch.x, ADMM(problem.H, prox=L1Prox(RHO), lam=lam, mu=mu).layer(0))
    torch.testing.assert_close(unfolded(batch.x), state.s, rtol=0, atol=1e-12)


# --- learning ---------------------------------------------------------------------------

def learned_modules(H):
    return {
        "LearnedADMM (Ex. 14)": LearnedADMM(H, prox=L1Prox(RHO), n_iter=20),
        "UnfoldedADMM (Ex. 15)": UnfoldedADMM(H, n_layers=5, prox=L1Prox(RHO)),
        "UnfoldedADMMWeights (Ex. 16)": UnfoldedADMMWeights(H, n_layers=5, prox=L1Prox(RHO)),
    }


@pytest.mark.parametrize("name", list(learned_modules(sensing_matrix(5, 10))))
def test_gradients_reach_every_learned_parameter(small, name):
    problem, batch = small
    net = learned_modules(problem.H)[name]
    ((net(batch.x) - batch.s) ** 2).sum().backward()
    names = [pname for pname, _ in net.named_parameters()]
    assert "log_lam" in names and "log_mu" in names
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname


def test_learned_admm_gradient_vanishes_as_the_iterations_converge(small):
    # seed Sec. II-B: hyperparameters do not change the converged solution, so learning
    # (lambda, mu) through ADMM run to convergence (Example 14) gets its signal from finite n_iter
    problem, batch = small

    def grad_norm(n_iter):
        net = LearnedADMM(problem.H, prox=L1Prox(RHO), n_iter=n_iter)
        ((net(batch.x) - batch.s) ** 2).sum().backward()
        return float(torch.stack([net.log_lam.grad, net.log_mu.grad]).norm())

    assert grad_norm(300) < 1e-9 * grad_norm(10)


def test_unfolded_admm_training_lowers_the_error_at_fixed_depth(small):
    problem, _ = small
    train, test = problem.sample(256, gen(3)), problem.sample(256, gen(4))
    net = UnfoldedADMM(problem.H, n_layers=5, prox=L1Prox(RHO))
    with torch.no_grad():
        before = float(((net(test.x) - test.s) ** 2).mean())
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(40):
        loss = ((net(train.x) - train.s) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(((net(test.x) - test.s) ** 2).mean())
    assert after < 0.8 * before


# --- engine -----------------------------------------------------------------------------

def test_admm_engine_runs_algorithm_1_on_the_benchmark_matrix():
    engine = engines.load("admm", seed=2, n_iter=10, rho=0.2, lam=0.4, mu=1.1)
    assert isinstance(engine, Engine)
    assert engine.info.name == "admm" and engine.info.family == "model-based"
    assert engine.info.in_shape == (250,) and engine.info.out_shape == (500,) and engine.info.n_params == 0
    H = sensing_matrix(250, 500, seed=2)
    np.testing.assert_array_equal(engine.operator, H.numpy())
    batch = SparseProblem(H=H).sample(3, gen(0))
    out = engine(batch.x.numpy())
    ref = ADMM(H, prox=L1Prox(0.2), lam=0.4, mu=1.1, n_iter=10)(batch.x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=1e-4)
    with pytest.raises(EngineInputError):
        engine(np.zeros(250))
    with pytest.raises(BackendUnavailable):
        engines.load("admm", backend="tensorrt")


def test_engine_names_are_registered():
    assert {"ista", "fista", "admm"} <= set(engines.available())
    assert {"seed", "n_iter", "rho", "lam", "mu"} <= accepted_params("admm")
    assert {"seed", "n_iter", "rho", "mu"} <= accepted_params("ista") == accepted_params("fista")
