"""Outlier gating (engines/tracking/gating.py): a missing or absurd observation is not used,
the track predicts through and says so, and the next good observations are filtered as usual."""

import numpy as np
import pytest
import torch

import engines
from drivers.sim.lorenz import LorenzParams, LorenzSimulator
from engines.tracking.gating import RunningScaleGate
from engines.tracking.kalman import build_ekf, ekf_predict

TRACKERS = [("ekf", "torch"), ("ukf", "torch"), ("kf", "torch"), ("pf", "torch"),
            ("kalmannet-lorenz", "torch"), ("kalmannet-lorenz", "onnxruntime"), ("mbrnn-lorenz", "torch")]


@pytest.fixture(scope="module")
def lorenz():
    """One trajectory of 200 steps of the dt-model Lorenz data, r2 = 1: states x, observations y."""
    x, y = LorenzSimulator(LorenzParams(seed=3, r2=1.0)).trajectories(1, 200)
    return x[0], y[0]


def load(name, backend):
    return engines.load(name, backend=backend, **({"n_particles": 300} if name == "pf" else {}))


def filter_all(tracker, ys):
    tracker.reset(1)
    out = [tracker.step(y[None]) for y in ys]
    return np.array([e.mean[0] for e in out]), np.array([e.gated[0] for e in out])


@pytest.mark.parametrize("name,backend", TRACKERS, ids=[f"{n}:{b}" for n, b in TRACKERS])
def test_one_1e30_observation_is_gated_and_every_later_step_is_filtered(lorenz, name, backend):
    x, y = lorenz
    tracker = load(name, backend)
    clean, clean_gated = filter_all(tracker, y)
    bad = y.copy()
    bad[80] = 1e30
    means, gated = filter_all(tracker, bad)
    assert not clean_gated.any()
    assert np.flatnonzero(gated).tolist() == [80]  # said so, once
    assert np.isfinite(means).all()
    mse_clean, mse_bad = (float(np.mean((m[100:] - x[100:]) ** 2)) for m in (clean, means))
    assert mse_bad <= 2.0 * mse_clean  # the track survived: as good as without the outlier


@pytest.mark.parametrize("name,backend", TRACKERS, ids=[f"{n}:{b}" for n, b in TRACKERS])
def test_a_missing_observation_predicts_through_and_the_track_goes_on(lorenz, name, backend):
    x, y = lorenz
    bad = y.copy()
    bad[50, 1] = np.nan
    means, gated = filter_all(load(name, backend), bad)
    assert np.flatnonzero(gated).tolist() == [50] and np.isfinite(means).all()


def test_kalmannet_predicts_through_with_its_model_f_on_a_missing_observation(lorenz):
    _, y = lorenz
    kn = engines.load("kalmannet-lorenz", backend="torch")
    kn.reset(1)
    for t in range(20):
        kn.step(y[t][None])
    with torch.inference_mode():
        predicted = kn.module.f(kn.state[0]).double().numpy()
    est = kn.step(np.full((1, 3), np.nan))
    assert est.gated.tolist() == [True]
    np.testing.assert_array_equal(est.mean, predicted)


def test_a_gated_track_leaves_the_other_tracks_of_the_batch_untouched(lorenz):
    _, y = lorenz
    single, _ = filter_all(build_ekf(), y)
    ekf = build_ekf()
    ekf.reset(2)
    for t in range(120):
        pair = np.stack((y[t], y[t]))
        pair[0] = 1e30 if t == 60 else pair[0]
        est = ekf.step(pair)
        assert est.gated.tolist() == [t == 60, False]
        np.testing.assert_array_equal(est.mean[1], single[t])


def test_a_track_the_filter_lost_gets_its_updates_back_within_a_few_steps(lorenz):
    x, y = lorenz
    ekf = build_ekf(p0=0.0)
    ekf.reset(1, np.array([[15.0, 15.0, 40.0]]))  # a "known" start, 40 away from the truth
    gated = [bool(ekf.step(obs[None]).gated[0]) for obs in y]
    assert gated[0] and gated.index(False) < 12  # the widening gate lets the truth back in
    assert not any(gated[20:])
    assert np.linalg.norm(ekf.x.numpy()[0] - x[-1]) < 3.0


def test_the_running_scale_gate_is_loose_at_first_tight_once_it_knows_the_scale_and_widens_on_misses():
    gate = RunningScaleGate(np.ones(3), dof=3)
    finite = np.array([True])
    assert not gate(np.full((1, 3), 100.0), finite)[0]  # unknown scale: 10 sigma of the prior passes
    gate.reset(1)
    for _ in range(40):
        assert not gate(np.ones((1, 3)), finite)[0]
    # now a squared innovation 100x the scale is gated, until the gate has widened 16x (12 x 16 > 100)
    assert [bool(gate(np.full((1, 3), 100.0), finite)[0]) for _ in range(5)] == [True] * 4 + [False]
    gate.reset(1)
    missing = np.array([False])
    assert gate(np.full((1, 3), np.inf), missing)[0] and gate.misses[0] == 0  # a missing reading: no miss
    assert gate(np.full((1, 3), 1e60), finite)[0] and gate.misses[0] == 1


def test_the_gated_step_of_the_ekf_is_exactly_its_prediction(lorenz):
    _, y = lorenz
    ekf = build_ekf()
    for t in range(30):
        ekf.step(y[t][None])
    with torch.inference_mode():
        x_prior, P_prior = ekf_predict(ekf.ssm, ekf.x, ekf.P)
    est = ekf.step(np.full((1, 3), 1e30))
    assert est.gated.tolist() == [True]
    np.testing.assert_array_equal(est.mean, x_prior.numpy())
    np.testing.assert_array_equal(est.cov, P_prior.numpy())
