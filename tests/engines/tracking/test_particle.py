"""The bootstrap particle filter (engines/tracking/particle.py): systematic resampling's
properties, convergence to the Kalman filter on a linear-Gaussian model, the builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engines
from drivers import open_source
from drivers.sim.lorenz import LorenzParams, LorenzSimulator
from engines.errors import EngineError, EngineInputError
from engines.tracking.kalman import KalmanFilter
from engines.tracking.particle import DEFAULT_PARTICLES, ParticleFilter, systematic_resample
from engines.tracking.ssm import constant_velocity


def run(tracker, y: np.ndarray) -> np.ndarray:
    tracker.reset(y.shape[0])
    return np.stack([tracker.step(y[:, t]).mean for t in range(y.shape[1])], 1)


def test_systematic_resampling_copies_each_particle_floor_or_ceil_of_np_w_times():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(50, 40, generator=g, dtype=torch.float64) ** 3
    w /= w.sum(1, keepdim=True)
    idx = systematic_resample(w, torch.rand(50, 1, generator=g, dtype=torch.float64))
    counts = torch.zeros_like(w).scatter_add_(1, idx, torch.ones_like(w))
    assert (counts >= torch.floor(40 * w) - 1e-9).all() and (counts <= torch.ceil(40 * w) + 1e-9).all()
    assert (idx.diff(dim=1) >= 0).all()  # sorted: neighbours stay neighbours


def test_systematic_resampling_keeps_every_particle_of_equal_weights_and_is_unbiased():
    w = torch.full((1, 8), 1 / 8, dtype=torch.float64)
    for u in (0.0, 0.5, 0.999):
        assert systematic_resample(w, torch.tensor([[u]], dtype=torch.float64)).tolist() == [list(range(8))]
    w = torch.tensor([[0.05, 0.6, 0.1, 0.25]], dtype=torch.float64)
    u = torch.linspace(0, 1, 10001, dtype=torch.float64)[:-1, None]
    counts = torch.zeros(10000, 4, dtype=torch.float64).scatter_add_(
        1, systematic_resample(w.expand(10000, -1), u), torch.ones(10000, 4, dtype=torch.float64))
    torch.testing.assert_close(counts.mean(0) / 4, w[0], rtol=0, atol=1e-3)  # E[count] = Np w


def test_pf_with_many_particles_converges_to_the_kalman_filter_on_a_linear_gaussian_model():
    ssm = constant_velocity(dt=0.1, q2=1.0, r2=0.5)
    rng = np.random.default_rng(1)
    A, C = ssm.A.numpy(), ssm.C.numpy()
    x, ys = np.zeros((4, 2)), []
    for _ in range(50):
        x = x @ A.T + rng.multivariate_normal(np.zeros(2), ssm.Q.numpy(), 4)
        ys.append(x @ C.T + np.sqrt(0.5) * rng.standard_normal((4, 1)))
    y = np.stack(ys, 1)
    x0, P0 = np.zeros(2), np.eye(2)
    kf = run(KalmanFilter(ssm, x0, P0), y)
    errs = {Np: np.abs(run(ParticleFilter(ssm, x0, P0, n_particles=Np, seed=2), y) - kf).mean()
            for Np in (100, 20000)}
    assert errs[20000] < 0.02  # KF posterior sd here ~0.3 (position) and ~0.8 (velocity)
    assert errs[20000] < errs[100] / 3  # error ~ 1/sqrt(Np)


def test_pf_tracks_sampling_mismatch_lorenz_data_like_the_ekf():
    x, y = LorenzSimulator(LorenzParams(seed=3, q2=0.0, r2=1.0, decimate=2000)).trajectories(1, 300)
    mse = {name: 10 * np.log10(np.mean((run(engines.load(name, q2=None), y) - x) ** 2))
           for name in ("ekf", "pf")}
    assert mse["pf"] < -2.0 and abs(mse["pf"] - mse["ekf"]) < 2.0


def test_pf_is_reproducible_by_seed_and_reset():
    _, y = LorenzSimulator(LorenzParams(seed=4)).trajectories(2, 30)
    pf = engines.load("pf", n_particles=200, seed=7, p0=1.0)
    a, b = run(pf, y), run(pf, y)
    np.testing.assert_array_equal(a, b)
    c = run(engines.load("pf", n_particles=200, seed=8, p0=1.0), y)
    assert np.abs(a - c).max() > 0


def test_pf_builds_from_a_lorenz_source_model_with_the_default_particle_count():
    # timing is a benchmark, not a test (shared CI cores): see DEFAULT_PARTICLES
    with open_source("sim:lorenz?decimate=2000&q2=0&n=1") as src:
        pf = engines.load("pf", **src.info.meta["model"])
    assert pf.n_particles == DEFAULT_PARTICLES and pf.info.name == "pf"
    assert pf.ssm.q2 > 0  # the data have none; a PF without process noise collapses
    est = pf.step(np.zeros((1, 3)))
    assert est.mean.shape == (1, 3) and est.cov.shape == (1, 3, 3)
    assert np.linalg.eigvalsh(est.cov[0]).min() > 0


def test_pf_bad_input_raises_and_keeps_the_particles():
    pf = engines.load("pf", n_particles=50)
    before = pf.particles.clone()
    with pytest.raises(EngineInputError, match="pf"):
        pf.step(np.zeros((2, 3)))
    torch.testing.assert_close(pf.particles, before, rtol=0, atol=0)
    with pytest.raises(EngineError, match="pf.*r2"):
        engines.load("pf", r2=0.0)
    with pytest.raises(EngineError, match="pf.*n_particles"):
        engines.load("pf", n_particles=0)
