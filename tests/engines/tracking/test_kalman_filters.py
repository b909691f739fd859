"""The linear KF, the UKF and the builders of engines/tracking/kalman.py, against filterpy.

filterpy (a test-only dependency) runs the same trajectories one sample at a time; our
batch-first filters must give the same means and covariances to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from filterpy.kalman import KalmanFilter as FilterpyKF
from filterpy.kalman import MerweScaledSigmaPoints
from filterpy.kalman import UnscentedKalmanFilter as FilterpyUKF

import engines
from drivers import open_source
from drivers.sim.lorenz import LorenzParams, LorenzSimulator
from engines.base import TrackerEngine
from engines.errors import BackendUnavailable, EngineError
from engines.load import accepted_params
from engines.tracking.kalman import (
    KalmanFilter,
    UnscentedKalmanFilter,
    merwe_weights,
    sigma_points,
)
from engines.tracking.ssm import LorenzSSM, constant_velocity, random_walk


def run(tracker, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means (N, T, n) and covariances (N, T, n, n) of a batch-N tracker over y (N, T, m)."""
    tracker.reset(y.shape[0])
    est = [tracker.step(y[:, t]) for t in range(y.shape[1])]
    return np.stack([e.mean for e in est], 1), np.stack([e.cov for e in est], 1)


def cv_data(ssm, N: int, T: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    A, C, Q, R = (M.numpy() for M in (ssm.A, ssm.C, ssm.Q, ssm.R))
    x = np.zeros((N, ssm.n))
    xs, ys = [], []
    for _ in range(T):
        x = x @ A.T + rng.multivariate_normal(np.zeros(ssm.n), Q, N)
        xs.append(x)
        ys.append(x @ C.T + rng.multivariate_normal(np.zeros(ssm.m), R, N))
    return np.stack(xs, 1), np.stack(ys, 1)


def test_kf_matches_filterpy_kalman_filter_on_constant_velocity():
    ssm = constant_velocity(dt=0.1, q2=0.5, r2=2.0)
    _, y = cv_data(ssm, 1, 200, seed=3)
    x0, P0 = np.array([0.5, -1.0]), np.diag([2.0, 3.0])
    mean, cov = run(KalmanFilter(ssm, x0, P0), y)
    ref = FilterpyKF(dim_x=2, dim_z=1)
    ref.x, ref.P = x0.reshape(2, 1), P0.copy()
    ref.F, ref.H, ref.Q, ref.R = (M.numpy() for M in (ssm.A, ssm.C, ssm.Q, ssm.R))
    for t in range(200):
        ref.predict()
        ref.update(y[0, t].reshape(1, 1))
        np.testing.assert_allclose(mean[0, t], ref.x.ravel(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(cov[0, t], ref.P, rtol=0, atol=1e-6)


def test_kf_on_the_random_walk_of_a_rotated_lorenz_source_matches_filterpy():
    ssm = random_walk(r2=0.5, obs="rotated", angle_deg=10.0)
    _, y = LorenzSimulator(LorenzParams(seed=2, r2=0.5, obs="rotated", angle_deg=10.0)).trajectories(1, 200)
    mean, cov = run(engines.load("kf", r2=0.5, obs="rotated", angle_deg=10.0, p0=1.0), y)
    ref = FilterpyKF(dim_x=3, dim_z=3)
    ref.x, ref.P = np.ones((3, 1)), np.eye(3)
    ref.F, ref.H, ref.Q, ref.R = (M.numpy() for M in (ssm.A, ssm.C, ssm.Q, ssm.R))
    for t in range(200):
        ref.predict()
        ref.update(y[0, t].reshape(3, 1))
        np.testing.assert_allclose(mean[0, t], ref.x.ravel(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(cov[0, t], ref.P, rtol=0, atol=1e-6)


def test_merwe_weights_and_sigma_points_are_filterpys():
    n, alpha, beta, kappa = 3, 0.5, 2.0, 1.0
    W = merwe_weights(n, alpha, beta, kappa)
    ref = MerweScaledSigmaPoints(n, alpha=alpha, beta=beta, kappa=kappa)
    np.testing.assert_allclose(W.Wm.numpy(), ref.Wm, rtol=0, atol=1e-15)
    np.testing.assert_allclose(W.Wc.numpy(), ref.Wc, rtol=0, atol=1e-15)
    x = np.array([1.0, -2.0, 20.0])
    P = np.array([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]])
    ours = sigma_points(torch.from_numpy(x)[None], torch.from_numpy(P)[None], W.c)[0].numpy()
    np.testing.assert_allclose(ours, ref.sigma_points(x, P), rtol=0, atol=1e-12)


@pytest.mark.parametrize("obs", ["identity", "rotated", "spherical"])
def test_ukf_matches_filterpy_unscented_kalman_filter(obs):
    p = LorenzParams(seed=5, q2=0.01, r2=0.5, obs=obs, angle_deg=20.0)
    _, y = LorenzSimulator(p).trajectories(1, 200)
    ssm = LorenzSSM(q2=0.05, r2=0.5, obs=obs, angle_deg=20.0)
    x0, P0 = np.array([1.0, 1.0, 1.0]), 0.3 * np.eye(3)
    alpha, beta, kappa = 0.8, 2.0, 0.5
    mean, cov = run(UnscentedKalmanFilter(ssm, x0, P0, alpha, beta, kappa), y)

    def as_np(fn):
        return lambda v, *_: fn(torch.from_numpy(np.reshape(v, (1, 3))))[0].numpy()

    def residual_z(a, b):
        return ssm.innovation(torch.from_numpy(np.atleast_2d(a)), torch.from_numpy(np.atleast_2d(b))).numpy()

    def z_mean(sigmas, Wm):  # ours: gamma_0 + sum Wm (gamma - gamma_0), wrapped (filterpy: sum Wm gamma)
        return sigmas[0] + Wm @ residual_z(sigmas, np.tile(sigmas[0], (len(sigmas), 1)))

    points = MerweScaledSigmaPoints(3, alpha=alpha, beta=beta, kappa=kappa)
    ref = FilterpyUKF(dim_x=3, dim_z=3, dt=0.02, hx=as_np(ssm.h), fx=as_np(ssm.f), points=points,
                      residual_z=lambda a, b: residual_z(a, b)[0], z_mean_fn=z_mean)
    ref.x, ref.P, ref.Q, ref.R = x0.copy(), P0.copy(), ssm.Q.numpy(), ssm.R.numpy()
    for t in range(200):
        ref.predict()
        # filterpy's update reuses predict's sigma points (drawn before Q was added); ours
        # redraws them from the prior N(x, P): give filterpy the redrawn points
        ref.sigmas_f = points.sigma_points(ref.x, ref.P)
        ref.update(y[0, t])
        np.testing.assert_allclose(mean[0, t], ref.x, rtol=0, atol=1e-6)
        np.testing.assert_allclose(cov[0, t], ref.P, rtol=0, atol=1e-6)


def test_ukf_and_ekf_agree_on_a_linear_observation_with_small_covariances():
    # with P small against the curvature of f, the unscented and linearized predicts coincide
    p = LorenzParams(seed=6, q2=1e-4, r2=1e-3)
    _, y = LorenzSimulator(p).trajectories(2, 100)
    ekf, _ = run(engines.load("ekf", q2=1e-4, r2=1e-3), y)
    ukf, _ = run(engines.load("ukf", q2=1e-4, r2=1e-3), y)
    np.testing.assert_allclose(ukf, ekf, rtol=0, atol=1e-3)


def test_ukf_on_noisy_state_observations_reaches_the_ekf_anchor():
    # ANCHORS "Tracking": nu = -20 dB, 1/r2 = 0 dB -> EKF -10.45 dB; the UKF is as good here
    x, y = LorenzSimulator(LorenzParams(seed=21, q2=0.01, r2=1.0)).trajectories(4, 1000)
    mean, _ = run(engines.load("ukf", q2=0.01, r2=1.0), y)
    assert 10 * np.log10(np.mean((mean - x) ** 2)) == pytest.approx(-10.45, abs=1.0)


def test_a_batch_of_3_ukf_tracks_equals_3_single_track_filters():
    p = LorenzParams(seed=8, q2=0.01, r2=1.0, x0_std=1.0, obs="spherical")
    _, y = LorenzSimulator(p).trajectories(3, 100)
    batch, _ = run(engines.load("ukf", q2=0.01, obs="spherical", p0=1.0), y)
    for i in range(3):
        single, _ = run(engines.load("ukf", q2=0.01, obs="spherical", p0=1.0), y[i : i + 1])
        np.testing.assert_allclose(batch[i], single[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["kf", "ukf"])
def test_kf_and_ukf_are_tracker_engines_built_from_a_lorenz_source_model(name):
    with open_source("sim:lorenz?obs=rotated&angle=1&r2=0.1&q2=0.001&J=4") as src:
        model = src.info.meta["model"]
    known = accepted_params(name)
    tracker = engines.load(name, **{k: v for k, v in model.items() if k in known})
    assert isinstance(tracker, TrackerEngine)
    assert tracker.info.name == name and tracker.info.family == "model-based"
    assert tracker.info.in_shape == (3,) and tracker.info.out_shape == (3,)
    assert tracker.ssm.R[0, 0].item() == pytest.approx(0.1)
    est = tracker.step(np.array([[1.0, 2.0, 3.0]]))
    assert est.mean.shape == (1, 3) and est.cov.shape == (1, 3, 3)
    if name == "ukf":
        assert (tracker.ssm.J, tracker.ssm.q2, tracker.ssm.angle_deg) == (4, 0.001, 1.0)


def test_kf_refuses_spherical_observations_and_other_backends():
    with pytest.raises(EngineError, match="kf.*linear observation"):
        engines.load("kf", obs="spherical")
    with pytest.raises(BackendUnavailable, match="ukf"):
        engines.load("ukf", backend="onnxruntime")
    with pytest.raises(EngineError, match="ukf.*alpha"):
        engines.load("ukf", alpha=0.0)
