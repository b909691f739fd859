"""The Lorenz state-space model and the EKF (engines/tracking/{ssm,kalman}.py).

Tests may import both layers: the numpy simulator (the world) checks the torch model
(what the filter assumes), and filterpy checks the filter.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from filterpy.kalman import ExtendedKalmanFilter as FilterpyEKF

import engines
from drivers import open_source
from drivers.sim.lorenz import LorenzParams, LorenzSimulator, lorenz_observe, lorenz_step
from engines.base import Estimate, TrackerEngine
from engines.errors import BackendUnavailable, EngineError, EngineInputError
from engines.tracking.kalman import ExtendedKalmanFilter, build_ekf, ekf_predict
from engines.tracking.ssm import DEFAULT_Q2, LorenzSSM

OBS = ["identity", "rotated", "spherical"]


def states(n: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal([0.0, 0.0, 25.0], 8.0, (n, 3))


def mse_db(est: np.ndarray, x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean((est - x) ** 2)))


def run(ekf, y: np.ndarray) -> np.ndarray:
    """Filter y (N, T, m) with a batch-N filter; means (N, T, n)."""
    ekf.reset(y.shape[0])
    return np.stack([ekf.step(y[:, t]).mean for t in range(y.shape[1])], 1)


@pytest.mark.parametrize("J, dt", [(5, 0.02), (2, 0.02), (5, 1e-3)])
def test_ssm_f_matches_the_numpy_simulator_to_1e12(J, dt):
    x = states()
    f = LorenzSSM(J=J, dt=dt).f(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(f, lorenz_step(x, dt, J), rtol=0, atol=1e-12)


@pytest.mark.parametrize("obs", OBS)
def test_ssm_h_matches_the_numpy_simulator(obs):
    x = states()
    h = LorenzSSM(obs=obs, angle_deg=1.0).h(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(h, lorenz_observe(x, obs, 1.0), rtol=0, atol=1e-12)


def test_F_jacobian_is_the_true_jacobian_of_f_not_F_of_x():
    ssm = LorenzSSM(J=5, dt=0.02)
    x = torch.from_numpy(states(16))
    jac = torch.func.vmap(torch.func.jacrev(lambda v: ssm.f(v[None])[0]))(x)
    F = ssm.F_jacobian(x)
    torch.testing.assert_close(F, jac, rtol=0, atol=1e-12)
    f, F2 = ssm.linearize_f(x)
    torch.testing.assert_close(f, ssm.f(x), rtol=0, atol=1e-13)
    torch.testing.assert_close(F2, F, rtol=0, atol=0)
    # the reference code's F(x) = sum (A dt)^j / j! is a different matrix
    A = ssm.A(x) * 0.02
    F_of_x = sum(torch.linalg.matrix_power(A, j) / math.factorial(j) for j in range(6))
    assert (F - F_of_x).abs().amax() > 0.01


@pytest.mark.parametrize("obs", OBS)
def test_H_jacobian_is_the_jacobian_of_h(obs):
    ssm = LorenzSSM(obs=obs, angle_deg=3.0)
    x = torch.from_numpy(states(16))
    jac = torch.func.vmap(torch.func.jacrev(lambda v: ssm.h(v[None])[0]))(x)
    torch.testing.assert_close(ssm.H_jacobian(x), jac, rtol=0, atol=1e-12)


def test_spherical_innovation_wraps_the_azimuth():
    ssm = LorenzSSM(obs="spherical")
    y = torch.tensor([[10.0, 0.1, 3.1]], dtype=torch.float64)
    y_hat = torch.tensor([[9.0, 0.2, -3.1]], dtype=torch.float64)
    d = ssm.innovation(y, y_hat)
    torch.testing.assert_close(d, torch.tensor([[1.0, -0.1, 6.2 - 2 * np.pi]], dtype=torch.float64))


@pytest.mark.parametrize("obs", ["identity", "rotated"])
def test_ekf_matches_filterpy_extended_kalman_filter(obs):
    p = LorenzParams(seed=4, q2=0.01, r2=0.5, obs=obs, angle_deg=20.0)
    _, y = LorenzSimulator(p).trajectories(1, 300)
    ssm = LorenzSSM(q2=0.01, r2=0.5, obs=obs, angle_deg=20.0)
    x0, P0 = np.array([1.0, 1.0, 1.0]), 0.3 * np.eye(3)
    ours = ExtendedKalmanFilter(ssm, x0=x0, P0=P0)

    def as_np(fn):
        return lambda v: fn(torch.from_numpy(v.reshape(1, 3)))[0].numpy()

    f, F_jac, h, H_jac = as_np(ssm.f), as_np(ssm.F_jacobian), as_np(ssm.h), as_np(ssm.H_jacobian)
    ref = FilterpyEKF(dim_x=3, dim_z=3)
    ref.x, ref.P, ref.Q, ref.R = x0.reshape(3, 1), P0.copy(), ssm.Q.numpy(), ssm.R.numpy()

    def predict_x(u=0):  # filterpy propagates the mean with F; the EKF uses f
        ref.x = f(ref.x.ravel()).reshape(3, 1)

    ref.predict_x = predict_x
    for t in range(300):
        est = ours.step(y[:, t])
        ref.F = F_jac(ref.x.ravel())  # at the posterior, before predict_x moves it
        ref.predict()
        ref.update(y[0, t].reshape(3, 1), HJacobian=lambda v: H_jac(v.ravel()),
                   Hx=lambda v: h(v.ravel()).reshape(3, 1))
        np.testing.assert_allclose(est.mean[0], ref.x.ravel(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(est.cov[0], ref.P, rtol=0, atol=1e-6)


def test_ekf_on_identity_observations_with_r2_1_reaches_the_anchor_mse():
    # ANCHORS "Tracking": nu = q2/r2 = -20 dB, 1/r2 = 0 dB, T = 2000 -> EKF -10.45 dB
    p = LorenzParams(seed=21, q2=0.01, r2=1.0)
    x, y = LorenzSimulator(p).trajectories(10, 2000)
    est = run(engines.load("ekf", q2=0.01, r2=1.0), y)
    assert mse_db(y, x) == pytest.approx(0.0, abs=0.2)
    assert mse_db(est, x) == pytest.approx(-10.45, abs=0.75)


def test_default_q2_tracks_sampling_mismatch_data_where_a_tiny_q2_diverges():
    p = LorenzParams(seed=3, q2=0.0, r2=1.0, decimate=2000)
    x, y = LorenzSimulator(p).trajectories(1, 1000)
    with open_source("sim:lorenz?q2=0&decimate=2000&n=1") as src:
        model = src.info.meta["model"]
    assert model["q2"] is None  # the data have no process noise: the filter picks q2
    default = mse_db(run(engines.load("ekf", **model), y), x)
    tiny = mse_db(run(engines.load("ekf", **{**model, "q2": 1e-4}), y), x)
    assert default < -4.0  # anchor EKF (grid-searched q): -6.43 dB at T = 3000
    assert tiny > 5.0


def test_a_batch_of_4_tracks_equals_4_single_track_filters():
    p = LorenzParams(seed=8, q2=0.01, r2=1.0, x0_std=1.0, obs="spherical")
    _, y = LorenzSimulator(p).trajectories(4, 200)
    z0 = np.random.default_rng(1).normal([1.0, 1.0, 1.0], 1.0, (4, 3))
    batch = build_ekf(q2=0.01, obs="spherical", p0=1.0)
    batch.reset(4, z0)
    single = [build_ekf(q2=0.01, obs="spherical", p0=1.0) for _ in range(4)]
    for i, ekf in enumerate(single):
        ekf.reset(1, z0[i : i + 1])
    for t in range(200):
        b = batch.step(y[:, t])
        for i, ekf in enumerate(single):
            s = ekf.step(y[i : i + 1, t])
            np.testing.assert_allclose(b.mean[i], s.mean[0], rtol=0, atol=1e-12)
            np.testing.assert_allclose(b.cov[i], s.cov[0], rtol=0, atol=1e-12)


def test_ekf_is_a_tracker_engine_with_its_info():
    ekf = engines.load("ekf", r2=0.5)
    assert isinstance(ekf, TrackerEngine)
    assert ekf.info == engines.EngineInfo(
        name="ekf", family="model-based", task="tracking", backend="torch", window=1,
        in_shape=(3,), out_shape=(3,), n_params=0,
    )
    assert ekf.ssm.R[0, 0].item() == 0.5 and ekf.ssm.Q[0, 0].item() == DEFAULT_Q2
    est = ekf.step(np.array([[1.0, 2.0, 3.0]]))
    assert isinstance(est, Estimate)
    assert est.mean.shape == (1, 3) and est.cov.shape == (1, 3, 3)
    assert est.mean.dtype == np.float64
    np.testing.assert_allclose(est.cov[0], est.cov[0].T)
    assert np.linalg.eigvalsh(est.cov[0]).min() > 0


def test_returned_estimates_are_not_views_of_the_filter_state():
    ekf = build_ekf()
    est = ekf.step(np.array([[1.0, 2.0, 3.0]]))
    est.mean[:] = np.nan
    assert np.isfinite(ekf.step(np.array([[1.0, 2.0, 3.0]])).mean).all()


def test_nan_observation_is_not_used_the_step_predicts_through_and_says_so():
    ekf = build_ekf()
    ekf.step(np.array([[1.0, 2.0, 3.0]]))
    with torch.inference_mode():
        x_prior, P_prior = ekf_predict(ekf.ssm, ekf.x, ekf.P)
    est = ekf.step(np.array([[1.0, np.nan, 3.0]]))
    assert est.gated.tolist() == [True]
    np.testing.assert_array_equal(est.mean, x_prior.numpy())
    np.testing.assert_array_equal(est.cov, P_prior.numpy())
    assert ekf.step(np.array([[1.0, 2.0, 3.0]])).gated.tolist() == [False]


def test_wrong_observation_shape_raises_engine_input_error():
    ekf = build_ekf()
    ekf.reset(2)
    for bad in (np.zeros((1, 3)), np.zeros((2, 2)), np.zeros(3)):
        with pytest.raises(EngineInputError, match="ekf"):
            ekf.step(bad)
    with pytest.raises(EngineInputError, match="z0"):
        ekf.reset(2, np.zeros((3, 3)))


def test_reset_starts_tracks_at_z0_and_forgets_the_past():
    ekf = build_ekf(p0=2.0)
    ekf.step(np.array([[5.0, 5.0, 5.0]]))
    z0 = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, 20.0]])
    ekf.reset(2, z0)
    np.testing.assert_array_equal(ekf.x.numpy(), z0)
    np.testing.assert_array_equal(ekf.P.numpy(), np.broadcast_to(2.0 * np.eye(3), (2, 3, 3)))
    ekf.reset()
    np.testing.assert_array_equal(ekf.x.numpy(), [[1.0, 1.0, 1.0]])


def test_a_singular_innovation_covariance_raises_instead_of_returning_nan():
    ekf = build_ekf(q2=0.0, r2=0.0, p0=0.0)
    with pytest.raises(EngineError, match="non-finite"):
        ekf.step(np.array([[1.0, 2.0, 3.0]]))


def test_unknown_or_invalid_parameters_raise_engine_error_naming_ekf():
    with pytest.raises(EngineError, match="ekf.*sigma"):
        engines.load("ekf", sigma=1.0)
    with pytest.raises(EngineError, match="ekf"):
        engines.load("ekf", obs="polar")
    with pytest.raises(EngineError, match="ekf"):
        engines.load("ekf", dt=-0.1)
    with pytest.raises(EngineError, match="ekf"):
        engines.load("ekf", x0=(1.0, 2.0))
    with pytest.raises(BackendUnavailable, match="ekf"):
        engines.load("ekf", backend="onnxruntime")


def test_the_source_model_description_builds_the_matching_filter():
    with open_source("sim:lorenz?obs=rotated&angle=1&r2=0.1&q2=0.001&J=4") as src:
        ekf = engines.load("ekf", **src.info.meta["model"])
    ssm = ekf.ssm
    assert (ssm.J, ssm.dt, ssm.q2, ssm.r2, ssm.obs, ssm.angle_deg) == (
        4, 0.02, 0.001, 0.1, "rotated", 1.0)
