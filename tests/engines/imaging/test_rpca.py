"""RPCA-FISTA: the prox maps on windows, convergence, the objective, separation on sim:ceus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engines
from drivers.sim.ceus import CeusParams, windows
from engines.errors import EngineInputError
from engines.imaging.rpca import (
    RobustPCA,
    casorati,
    from_casorati,
    window_mixed_shrinkage,
    window_svt,
)
from engines.imaging.svd_filter import SVDFilter
from engines.ops.shrinkage import mixed_l12_shrinkage, svt


@pytest.fixture(scope="module")
def ceus():
    """4 windows of 32 x 32 x 20 from the simulator (held-out seed), as tensors D, L, S."""
    w = windows(CeusParams(seed=3), 4, 20, 32)
    return {k: torch.from_numpy(v) for k, v in w.items()}


def random_windows(N=2, T=6, H=5, W=4, seed=0):
    return torch.randn(N, T, 2, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_casorati_round_trip_and_layout():
    x = random_windows()
    Zr, Zi = casorati(x)
    assert Zr.shape == (2, 20, 6)
    # row = pixel (r, c) at r W + c, column = frame
    assert Zr[1, 4 * 3 + 2, 5] == x[1, 5, 0, 3, 2] and Zi[0, 7, 1] == x[0, 1, 1, 1, 3]
    torch.testing.assert_close(from_casorati(Zr, Zi, x), x)


def test_window_svt_is_the_svt_of_the_complex_casorati_matrix():
    x = random_windows()
    Zr, Zi = casorati(x)
    expected = svt(torch.complex(Zr, Zi), 1.5)
    Lr, Li = casorati(window_svt(x, 1.5))
    torch.testing.assert_close(torch.complex(Lr, Li), expected)


def test_window_mixed_shrinkage_shrinks_each_pixels_time_series_as_a_group():
    x = random_windows()
    Zr, Zi = casorati(x)
    expected = mixed_l12_shrinkage(torch.complex(Zr, Zi), 3.5)
    Sr, Si = casorati(window_mixed_shrinkage(x, 3.5))  # row norms ~ sqrt(2 T) = 3.5
    torch.testing.assert_close(torch.complex(Sr, Si), expected)
    zeroed = (Sr.abs() + Si.abs()).sum(-1) == 0
    assert zeroed.any() and not zeroed.all()


def test_rpca_ista_decreases_the_objective_monotonically(ceus):
    D = ceus["D"][:2].double()
    model = RobustPCA(n_iter=30, momentum=False)
    with torch.no_grad():
        values = torch.stack([model.objective(D, L, S) for L, S in model.iterates(D)])
    assert (values[1:] <= values[:-1] * (1 + 1e-9)).all()


def test_rpca_fista_converges_to_a_fixed_point_below_ista(ceus):
    D = ceus["D"][:2].double()
    fista = RobustPCA(n_iter=200)
    with torch.no_grad():
        its = fista.iterates(D)
        ista_value = RobustPCA(n_iter=50, momentum=False).objective(D, *RobustPCA(n_iter=50, momentum=False)
                                                                    .iterates(D)[-1])
    (L1, S1), (L2, S2) = its[-2], its[-1]
    step = (L2 - L1).norm() + (S2 - S1).norm()
    assert step < 1e-3 * (L2.norm() + S2.norm())
    assert (fista.objective(D, L2, S2) <= ista_value + 1e-9).all()


def test_rpca_fista_separates_bubbles_better_than_nothing_and_than_the_svd_filter(ceus):
    D, S = ceus["D"], ceus["S"]
    with torch.no_grad():
        S_hat = RobustPCA(n_iter=50)(D)
    mse = float(((S_hat - S) ** 2).mean())
    svd = SVDFilter(k=2, output="all")(ceus["D"].numpy())
    assert mse < float((S**2).mean())
    assert mse < float(((torch.from_numpy(svd) - S) ** 2).mean())


def test_rpca_is_scale_equivariant(ceus):
    D = ceus["D"][:1].double()
    model = RobustPCA(n_iter=10)
    with torch.no_grad():
        torch.testing.assert_close(model(7.0 * D), 7.0 * model(D))


def test_engine_rpca_fista_returns_every_frame_or_the_newest():
    engine = engines.load("rpca-fista", n_iter=3)
    assert engine.info.family == "model-based" and engine.info.task == "clutter-suppression"
    x = np.random.default_rng(0).normal(size=(1, 20, 2, 16, 16)).astype(np.float32)
    every = engine(x)
    assert every.shape == (1, 20, 2, 16, 16)
    newest = engines.load("rpca-fista", n_iter=3, output="last")(x)
    assert newest.shape == (1, 1, 2, 16, 16) and np.array_equal(newest, every[:, -1:])
    with pytest.raises(EngineInputError, match="rpca-fista"):
        engine(x[:, :10])


def test_negative_lambda_is_rejected():
    with pytest.raises(ValueError, match="lambda1"):
        RobustPCA(lambda1=-1.0)
