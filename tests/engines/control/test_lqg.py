"""engines/control/lqg.py, mpc.py, closed_loop.py: LQR/LQG against python-control, issue 17's
reference costs, and the MPC's box."""

import control
import numpy as np
import pytest

from engines.control.closed_loop import LinearController, simulate
from engines.control.lqg import (
    KalmanEstimator,
    LinearPlant,
    constant_velocity_plant,
    kalman_gain,
    lqg_cost,
    lqr_gain,
)
from engines.control.mpc import BoxMPC

Q, R = np.eye(2), np.array([[0.1]])


def test_lqr_gain_of_the_cv_plant_matches_python_control_and_the_issue():
    plant = constant_velocity_plant(dt=0.1)
    K, S = lqr_gain(plant.A, plant.B, Q, R)
    K_ref, S_ref, _ = control.dlqr(plant.A, plant.B, Q, R)
    np.testing.assert_allclose(K, K_ref, rtol=1e-9)
    np.testing.assert_allclose(S, S_ref, rtol=1e-9)
    np.testing.assert_allclose(K, [[2.586, 3.443]], atol=5e-4)  # issue 17's reference K


def test_lqr_gain_matches_python_control_on_a_random_plant():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((4, 4)), rng.standard_normal((4, 2))
    Qr, Rr = np.diag([1.0, 2.0, 0.5, 3.0]), np.diag([0.3, 1.0])
    K_ref, _, _ = control.dlqr(A, B, Qr, Rr)
    np.testing.assert_allclose(lqr_gain(A, B, Qr, Rr)[0], K_ref, rtol=1e-8)


def test_kalman_filter_gain_is_python_controls_predictor_gain_without_A():
    plant = constant_velocity_plant(dt=0.1)
    L, P = kalman_gain(plant.A, plant.C, plant.V, plant.W)
    L_pred, P_ref, _ = control.dlqe(plant.A, np.eye(2), plant.C, plant.V, plant.W)
    np.testing.assert_allclose(P, P_ref, rtol=1e-9)
    np.testing.assert_allclose(plant.A @ L, L_pred, rtol=1e-9)  # ANCHORS: dlqe returns A P C'(CPC'+R)^-1


def test_reference_costs_in_closed_form():
    plant = constant_velocity_plant(dt=0.1, q2=1.0, r2=1.0)
    K, S = lqr_gain(plant.A, plant.B, Q, R)
    L, P = kalman_gain(plant.A, plant.C, plant.V, plant.W)
    J = lqg_cost(plant, K, L, Q, R)
    assert J == pytest.approx(2.787, abs=5e-4)  # issue 17: oracle LQG
    Sigma = P - L @ plant.C @ P  # the separation formula tr(SV) + tr(Sigma K'(R + B'SB)K)
    G = R + plant.B.T @ S @ plant.B
    assert J == pytest.approx(np.trace(S @ plant.V) + np.trace(Sigma @ K.T @ G @ K))
    L_mis, _ = kalman_gain(plant.A, plant.C, plant.V, [[0.01]])
    assert lqg_cost(plant, K, L_mis, Q, R) == pytest.approx(15.48, abs=0.01)  # issue 17: J ~ 15.5


def test_monte_carlo_costs_agree_with_the_closed_form():
    """400 runs x 600 steps (burn-in 100), seed 0: the estimate is within 4 standard errors."""
    plant = constant_velocity_plant(dt=0.1)
    K, _ = lqr_gain(plant.A, plant.B, Q, R)
    for W, J_exact in (([[1.0]], 2.7873), ([[0.01]], 15.4827)):
        r = simulate(plant, KalmanEstimator(plant.with_noise(W=W)), LinearController(K), Q, R, runs=400,
                     steps=600, burn=100, seed=0)
        assert abs(r.J - J_exact) < 4 * r.J_se, (W, r.J, r.J_se)
        assert r.J_se < 0.02 * J_exact


def test_unstable_loop_is_refused_with_a_reason():
    plant = constant_velocity_plant()
    L, _ = kalman_gain(plant.A, plant.C, plant.V, plant.W)
    with pytest.raises(ValueError, match="unstable"):
        lqg_cost(plant, np.array([[-1.0, 0.0]]), L, Q, R)


def test_bad_plant_matrices_name_the_matrix():
    with pytest.raises(ValueError, match="C must have shape"):
        LinearPlant(np.eye(2), np.ones((2, 1)), np.ones((1, 3)), np.eye(2), np.eye(1))


def test_mpc_with_inactive_box_is_lqr():
    plant = constant_velocity_plant()
    K, _ = lqr_gain(plant.A, plant.B, Q, R)
    mpc = BoxMPC(plant.A, plant.B, Q, R, horizon=10, lo=-1e3, hi=1e3, iters=3000)
    z = np.random.default_rng(0).standard_normal((6, 2))
    np.testing.assert_allclose(mpc(z), -z @ K.T, atol=1e-4)


def test_mpc_never_leaves_its_box_in_closed_loop():
    plant = constant_velocity_plant()
    mpc = BoxMPC(plant.A, plant.B, Q, R, horizon=10, lo=-2.0, hi=1.5, iters=50)
    r = simulate(plant, KalmanEstimator(plant), mpc, Q, R, runs=50, steps=300, burn=50, seed=1, z0_std=3.0)
    assert r.s.min() >= -2.0 and r.s.max() <= 1.5
    assert r.s.min() == -2.0 and r.s.max() == 1.5  # the bounds were active
    assert np.isfinite(r.J)


def test_mpc_rejects_an_empty_box():
    plant = constant_velocity_plant()
    with pytest.raises(ValueError, match="lo <= hi"):
        BoxMPC(plant.A, plant.B, Q, R, lo=1.0, hi=-1.0)
