"""Seed Example 13: the Kalman filter with V, W learned by BPTT (engines/tracking/kalman.py
LearnedCovarianceKF) and its recipe (mbdl_app/training/recipes/learned_covariance.py)."""

from __future__ import annotations

import json

import numpy as np
import torch

from engines.tracking.kalman import KalmanFilter, LearnedCovarianceKF
from engines.tracking.ssm import constant_velocity
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.learned_covariance import simulate


def test_initialized_at_the_true_covariances_it_is_the_kalman_filter():
    ssm = constant_velocity(dt=0.1, q2=0.5, r2=2.0)
    y, _ = simulate(ssm, 3, 80, seed=1)
    x0, P0 = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    learned = LearnedCovarianceKF(ssm, V0=ssm.Q, W0=ssm.R, x0=x0, P0=P0)
    torch.testing.assert_close(learned.V, ssm.Q, rtol=0, atol=1e-15)
    with torch.no_grad():
        ours = learned(y).numpy()
    kf = KalmanFilter(ssm, x0.numpy(), P0.numpy())
    kf.reset(3)
    ref = np.stack([kf.step(y[:, t].numpy()).mean for t in range(80)], 1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)


def test_the_state_mse_has_gradients_in_both_cholesky_factors_and_v_w_stay_definite():
    ssm = constant_velocity()
    y, x = simulate(ssm, 4, 30, seed=2)
    kf = LearnedCovarianceKF(ssm, V0=torch.eye(2, dtype=torch.float64), W0=ssm.R,
                             x0=torch.zeros(2, dtype=torch.float64), P0=torch.eye(2, dtype=torch.float64))
    torch.nn.functional.mse_loss(kf(y), x).backward()
    for theta in (kf.theta_V, kf.theta_W):
        assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    with torch.no_grad():  # any parameter values give positive definite covariances
        kf.theta_V.copy_(torch.tensor([[-30.0, 0.0], [5.0, 3.0]]))
    assert torch.linalg.eigvalsh(kf.V).min() > 0 and torch.linalg.eigvalsh(kf.W).min() > 0


def test_learned_covariance_recipe_quick_improves_on_the_mismatched_filter(tmp_path):
    folder = get_recipe("learned-covariance").run(tmp_path, quick=True, quiet=True)
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    m = card["metrics"]
    assert card["task"] == "kalman-covariances" and card["family"] == "learned-optimizer"
    assert m["test_mse_full_knowledge"] < m["test_mse_learned"] < m["test_mse_mismatched"]
    assert np.asarray(m["V_learned"]).shape == (2, 2) and np.asarray(m["W_learned"]).shape == (1, 1)
    assert not (folder / "model.onnx").exists()  # no engine task: nothing to export
