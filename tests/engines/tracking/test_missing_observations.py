"""Missing observations (issue 17, item 5): every tracker predicts through a NaN row, flags it
(`Estimate.gated`), and stays finite at 10 % and 50 % missing on independent Lorenz data
(mbdl_app/training/lorenz_independent.py: DOP853, random starts on the attractor).

Bounds from measurements on this set (2 x 200 steps; the full figures, 10 x 1000, are in the
issue-17 report): each tracker's MSE at 10 % missing is within 2 dB of its MSE without, at
50 % within a per-tracker bound. The non-dropout KalmanNet and the model-based RNN degrade
far more at 50 % (they were never trained with gaps); kalmannet-lorenz-drop was.
"""

from __future__ import annotations

import numpy as np
import pytest

import engines
from engines.errors import UnknownEngineError
from mbdl_app.training.lorenz_independent import drop_rows, independent_set, model_params, run_tracker

N, T = 2, 200
# tracker -> the largest MSE (dB) allowed at 50 % missing (measured + margin, see the docstring)
# (measured at 50 %: kf 7.9, ekf -3.5, ukf -3.5, pf -3.1 (200 particles, for time),
# kalmannet-lorenz 5.8 (12.2 on 3 x 300:
# erratic), kalmannet-lorenz-ft 4.6, mbrnn-lorenz -2.6, kalmannet-lorenz-drop -4.1 dB)
BOUND_50 = {"kf": 12.0, "ekf": -1.5, "ukf": -1.5, "pf": -1.5, "kalmannet-lorenz": 20.0, "mbrnn-lorenz": 3.0,
            "kalmannet-lorenz-ft": 20.0,
            "kalmannet-lorenz-drop": 0.0}


@pytest.fixture(scope="module")
def data():
    x0, x, y = independent_set(N, T, seed=4242)
    return x0, x, {frac: (y if frac == 0 else drop_rows(y, frac, 17)) for frac in (0.0, 0.1, 0.5)}


def _db(means, x):
    return 10 * np.log10(np.mean((means - x) ** 2))


@pytest.mark.parametrize("name", sorted(BOUND_50))
def test_every_tracker_predicts_through_missing_rows_and_flags_them(name, data):
    x0, x, ys = data
    try:
        engine = engines.load(name, **model_params(name), **({"n_particles": 200} if name == "pf" else {}))
    except UnknownEngineError:
        pytest.skip(f"{name} is not trained here")
    mse = {}
    for frac, y in ys.items():
        means, gated, _ = run_tracker(engine, y, x0)
        missing = ~np.isfinite(y).all(-1)
        assert np.isfinite(means).all(), (name, frac)
        assert gated[missing].all(), f"{name}: a missing row was not flagged"
        assert gated[~missing].mean() < 0.02, f"{name}: {gated[~missing].mean():.3f} of the real rows gated"
        mse[frac] = _db(means, x)
    assert mse[0.1] < mse[0.0] + 2.0, (name, mse)
    assert mse[0.5] < BOUND_50[name], (name, mse)
