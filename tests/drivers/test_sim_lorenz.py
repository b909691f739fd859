"""The Lorenz simulator and live source (drivers/sim/lorenz.py): KalmanNet's setups as data."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from drivers import SourceEnded, SourceError, open_source
from drivers.base import Sample
from drivers.sim.lorenz import (
    LorenzParams,
    LorenzSimulator,
    LorenzSource,
    lorenz_flow,
    lorenz_observe,
    lorenz_step,
)


def lorenz_rhs(t, x):
    return [10 * (x[1] - x[0]), 28 * x[0] - x[1] - x[0] * x[2], x[0] * x[1] - 8 / 3 * x[2]]


def on_attractor(x: np.ndarray) -> bool:
    """Inside the box the Lorenz attractor (sigma 10, rho 28, beta 8/3) lives in."""
    return bool((np.abs(x[..., 0]) < 25).all() and (np.abs(x[..., 1]) < 32).all()
                and (x[..., 2] > -1).all() and (x[..., 2] < 55).all())


def test_same_seed_gives_the_same_trajectories_and_another_seed_does_not():
    p = LorenzParams(seed=3, x0_std=1.0)
    x1, y1 = LorenzSimulator(p).trajectories(4, 50)
    x2, y2 = LorenzSimulator(p).trajectories(4, 50)
    x3, y3 = LorenzSimulator(LorenzParams(seed=4, x0_std=1.0)).trajectories(4, 50)
    assert x1.shape == (4, 50, 3) and y1.shape == (4, 50, 3)
    assert x1.dtype == np.float64 and y1.dtype == np.float64
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert not np.allclose(x1, x3) and not np.allclose(y1, y3)


def test_trajectories_of_one_batch_are_independent():
    x, y = LorenzSimulator(LorenzParams(seed=0, x0_std=1.0)).trajectories(3, 100)
    for i in range(3):
        for j in range(i):
            assert np.abs(x[i] - x[j]).max() > 1.0
            assert np.abs((y - x)[i] - (y - x)[j]).max() > 1.0


def test_noise_has_the_requested_variances():
    p = LorenzParams(seed=1, q2=0.04, r2=0.25)
    sim = LorenzSimulator(p)
    x, y = sim.trajectories(50, 200)
    assert np.var(y - x) == pytest.approx(0.25, rel=0.05)
    w = x[:, 1:] - lorenz_step(x[:, :-1].reshape(-1, 3)).reshape(50, 199, 3)
    assert np.var(w) == pytest.approx(0.04, rel=0.05)


def test_zero_noise_trajectory_follows_the_discrete_model_from_x0():
    x, y = LorenzSimulator(LorenzParams(q2=0.0, r2=0.0)).trajectories(1, 30)
    ref = np.array([[1.0, 1.0, 1.0]])
    for t in range(30):
        ref = lorenz_step(ref, 0.02, 5)
        np.testing.assert_array_equal(x[:, t], ref)
    np.testing.assert_array_equal(y, x)


def test_one_long_run_equals_the_same_run_in_chunks():
    p = LorenzParams(seed=5, x0_std=2.0)
    whole = LorenzSimulator(p).stream(3).advance(40)
    stream = LorenzSimulator(p).stream(3)
    parts = [stream.advance(k) for k in (1, 17, 22)]
    np.testing.assert_array_equal(whole[0], np.concatenate([q[0] for q in parts], 1))
    np.testing.assert_array_equal(whole[1], np.concatenate([q[1] for q in parts], 1))


def test_one_trajectory_in_floats_matches_a_large_batch_in_arrays_bit_for_bit():
    x0 = np.random.default_rng(0).normal([0, 0, 25], 8, (40, 3))  # 40 rows: numpy path
    batched = lorenz_flow(x0, 1e-3, 5, steps=300)
    one_by_one = np.concatenate([lorenz_flow(x0[i : i + 1], 1e-3, 5, steps=300) for i in range(40)])
    np.testing.assert_array_equal(batched, one_by_one)


def test_step_is_the_taylor_series_of_A_dt_applied_to_x():
    x = np.array([[3.0, -2.0, 20.0]])
    A = np.array([[-10, 10, 0], [28, -1, -x[0, 0]], [0, x[0, 0], -8 / 3]])
    M = A * 0.02
    F = sum(np.linalg.matrix_power(M, j) / math.factorial(j) for j in range(6))
    np.testing.assert_allclose(lorenz_step(x, 0.02, 5)[0], F @ x[0], rtol=1e-14, atol=1e-13)


@pytest.mark.parametrize("x0", [[1.0, 1.0, 1.0], [-5.0, -7.0, 20.0]])
def test_small_dt_taylor_matches_scipy_solve_ivp_and_converges_at_first_order(x0):
    ref = solve_ivp(lorenz_rhs, (0, 0.1), x0, method="DOP853", rtol=1e-12, atol=1e-12).y[:, -1]
    err = {}
    for dt, J in ((1e-5, 5), (1e-4, 5), (1e-4, 12)):
        err[dt, J] = np.abs(lorenz_flow(np.array([x0]), dt, J, round(0.1 / dt))[0] - ref).max()
    assert err[1e-5, 5] < 1e-3 * np.abs(ref).max()
    # A(x) is frozen over a step, so the error shrinks like dt, and a higher J does not help.
    assert err[1e-4, 5] / err[1e-5, 5] == pytest.approx(10, rel=0.05)
    assert err[1e-4, 12] == pytest.approx(err[1e-4, 5], rel=1e-6)


def test_sampling_mismatch_truth_differs_from_the_dt_model_but_stays_on_the_attractor():
    fine = LorenzParams(q2=0.0, r2=1.0, decimate=2000, seed=2)
    x, y = LorenzSimulator(fine).trajectories(1, 150)
    coarse, _ = LorenzSimulator(LorenzParams(q2=0.0, r2=1.0)).trajectories(1, 150)
    assert on_attractor(x) and on_attractor(coarse)
    one_step = np.abs(x[0, 1:] - lorenz_step(x[0, :-1])).max(axis=1)
    assert one_step.max() > 0.05  # the dt = 0.02 model is wrong for the truth
    assert np.abs(x - coarse).max() > 1.0
    # ...while the truth is the ODE: 2000 fine steps land near the exact flow
    ode = solve_ivp(lorenz_rhs, (0, 0.02), x[0, 99], method="DOP853", rtol=1e-12, atol=1e-12)
    assert np.abs(ode.y[:, -1] - x[0, 100]).max() < 1e-3
    assert np.var(y - x) == pytest.approx(1.0, rel=0.3)


@pytest.mark.parametrize("obs", ["identity", "rotated", "spherical"])
def test_observation_models_give_three_values_per_state(obs):
    x, y = LorenzSimulator(LorenzParams(obs=obs, angle_deg=10.0, r2=0.0)).trajectories(2, 20)
    assert y.shape == (2, 20, 3)
    np.testing.assert_allclose(y, lorenz_observe(x, obs, 10.0))


def test_identity_rotated_and_spherical_observations_have_their_closed_form_values():
    x = np.array([[3.0, 4.0, 12.0], [0.0, -2.0, 0.0]])
    np.testing.assert_array_equal(lorenz_observe(x, "identity"), x)
    rot = lorenz_observe(x, "rotated", 90.0)  # R_z R_y R_x by 90 degrees each: x -> (x3, x2, -x1)
    np.testing.assert_allclose(rot, [[12.0, 4.0, -3.0], [0.0, -2.0, 0.0]], atol=1e-12)
    sph = lorenz_observe(x, "spherical")
    np.testing.assert_allclose(sph[:, 0], [13.0, 2.0])
    np.testing.assert_allclose(sph[0, 1:], [math.atan2(12, 5), math.atan2(4, 3)])
    np.testing.assert_allclose(sph[1, 1:], [0.0, -math.pi / 2])
    r, el, az = sph.T
    back = np.stack((r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el)), 1)
    np.testing.assert_allclose(back, x, atol=1e-12)


def test_bad_params_are_rejected():
    for bad in (dict(obs="polar"), dict(dt=0.0), dict(J=0), dict(r2=-1.0), dict(decimate=0),
                dict(x0=(1.0, 2.0))):
        with pytest.raises(ValueError):
            LorenzParams(**bad)


def test_live_source_replays_the_batch_simulator_sample_for_sample():
    p = LorenzParams(seed=9, obs="rotated", angle_deg=1.0)
    x, y = LorenzSimulator(p).trajectories(1, 600)  # > one chunk of 256
    with LorenzSource(p, n_samples=600, speed=0) as src:
        samples = [src.read() for _ in range(600)]
        with pytest.raises(SourceEnded):
            src.read()
    assert all(isinstance(s, Sample) for s in samples)
    assert [s.index for s in samples] == list(range(600))
    assert samples[7].t == pytest.approx(7 * 0.02)
    np.testing.assert_array_equal(np.stack([s.value for s in samples]), y[0])
    np.testing.assert_array_equal(np.stack([s.truth["state"] for s in samples]), x[0])
    assert samples[0].value.dtype == np.float64 and samples[0].value.shape == (3,)


def test_open_source_uri_builds_the_setup_and_describes_the_model():
    uri = ("sim:lorenz?seed=1&rate=500&r2=0.5&q2=0&obs=rotated&angle=1&J=4&dt=0.01"
           "&decimate=1000&n=3&speed=0")
    with open_source(uri) as src:
        info = src.info
        items = [src.read(), src.read(), src.read()]
        with pytest.raises(SourceEnded):
            src.read()
    assert info.uri == uri and info.kind == "samples" and info.shape == (3,)
    assert info.rate_hz == 500 and info.truth_shapes == {"state": (3,)}
    assert info.meta["model"] == {"J": 4, "dt": 0.01, "q2": None, "r2": 0.5, "obs": "rotated",
                                  "angle_deg": 1.0, "x0": [1.0, 1.0, 1.0], "p0": 0.0}
    assert info.meta["params"]["decimate"] == 1000
    json.dumps(info.meta)
    assert [s.t for s in items] == pytest.approx([0.0, 0.01, 0.02])
    assert all(s.truth["state"].shape == (3,) for s in items)


@pytest.mark.parametrize("query", ["obs=polar", "dt=-1", "J=five", "n=-2", "speed=-1",
                                   "rate=fast", "colour=red", "decimate=x", "r2=-1"])
def test_bad_uri_parameters_raise_source_error_naming_the_uri(query):
    uri = f"sim:lorenz?{query}"
    with pytest.raises(SourceError, match="sim:lorenz"):
        open_source(uri)


def test_live_source_keeps_its_rate():
    with open_source("sim:lorenz?rate=200&n=21") as src:
        t0 = time.monotonic()
        got = 0
        while got < 21:
            got += src.read(timeout=0.5) is not None
        elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 0.5  # 20 periods of 5 ms after the first sample


def test_read_returns_none_when_the_next_sample_is_not_due():
    with open_source("sim:lorenz?rate=1") as src:
        assert src.read(timeout=0.01) is not None  # the first one is due at once
        assert src.read(timeout=0.01) is None


def test_reading_a_closed_source_raises_source_error():
    src = open_source("sim:lorenz")
    with pytest.raises(SourceError, match="not open"):
        src.read()
    with pytest.raises(SourceError, match="not open"):
        _ = src.info


def test_sampling_mismatch_live_source_produces_samples_at_hundreds_per_second():
    with open_source("sim:lorenz?decimate=2000&q2=0&speed=0&n=50") as src:
        src.read()
        t0 = time.perf_counter()
        for _ in range(49):
            src.read()
        rate = 49 / (time.perf_counter() - t0)
    assert rate > 100  # ~600/s on one core of the dev box; documented in the module
