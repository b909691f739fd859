"""The shipped KalmanNet artifacts: they load by name, carry their held-out metrics, and track."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engines
import exported_models
from drivers.sim.lorenz import LorenzParams, LorenzSimulator

SHIPPED = ("kalmannet-lorenz", "kalmannet-lorenz-rot")


def shipped(name: str):
    path = exported_models.ROOT / name
    if not (path / "card.json").is_file():
        pytest.skip(f"{name} is not trained yet (mbdl train {name})")
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_card_records_held_out_mse_spread_count_and_the_ekf_reference(name):
    card = json.loads((shipped(name) / "card.json").read_text())
    m = card["metrics"]
    assert {"test_mse_db", "test_mse_db_std", "test_sequences", "test_T"} <= set(m)
    assert {"mse_db", "mse_db_std", "run_time_s"} <= set(m["ekf"])
    assert card["architecture"]["kwargs"]["arch"] == "arch2" and card["task"] == "tracking"


def test_rotation_artifact_tracks_below_the_observation_noise_with_a_covariance():
    shipped("kalmannet-lorenz-rot")
    engine = engines.load("kalmannet-lorenz-rot", backend="torch")
    params = LorenzParams(q2=1e-5, r2=1e-3, obs="rotated", angle_deg=1.0, seed=4242)
    x, y = LorenzSimulator(params).trajectories(2, 300)
    engine.reset(2)
    est = [engine.step(y[:, t]) for t in range(300)]
    mse = np.mean((np.stack([e.mean for e in est], 1) - x) ** 2)
    assert 10 * np.log10(mse) < -30.0  # r2 = 1e-3: -30 dB per component
    assert est[-1].cov.shape == (2, 3, 3)
