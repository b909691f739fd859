"""The independent Table 2 set (issue 17, item 7): scipy DOP853 on the exact Lorenz ODE from
random starts on the attractor, and the shipped KalmanNet and EKF on a small piece of it.

The full figures (20 x 3000, `mbdl reproduce table2-independent`) are in the issue-17
report. Here 4 x 500 steps: measured kalmannet-lorenz -10.63 dB, kalmannet-lorenz-ft -10.92 dB
and ekf -5.97 dB; the test asks, of both KalmanNets, <= -10.0 dB (a 0.6 dB margin for the
small set) and a lead of >= 3 dB over the EKF.
"""

from __future__ import annotations

import numpy as np

import engines
from mbdl_app.experiments.lorenz_independent import run_independent
from mbdl_app.training.lorenz_independent import MODEL, independent_set, integrate, mse_db, run_tracker


def test_the_set_is_deterministic_on_the_attractor_and_matches_the_ode():
    x0, x, y = independent_set(3, 100, seed=11)
    x0b, xb, yb = independent_set(3, 100, seed=11)
    assert np.array_equal(x, xb) and np.array_equal(y, yb) and x.shape == y.shape == (3, 100, 3)
    assert (x[..., 2] > 0).all() and np.abs(x).max() < 60  # on the attractor, not at a transient
    assert abs(float(np.var(y - x)) - 1.0) < 0.15  # r2 = 1
    # restarting the integration from a sample continues the same trajectory (tolerance 1e-10)
    again = integrate(x[:, 49], 50)
    assert np.abs(again - x[:, 50:]).max() < 1e-6


def test_shipped_kalmannets_beat_the_ekf_on_independent_data():
    x0, x, y = independent_set(4, 500, seed=31)
    ekf = mse_db(run_tracker(engines.load("ekf", **MODEL), y, x0)[0], x)["mse_db"]
    for name in ("kalmannet-lorenz", "kalmannet-lorenz-ft"):
        kn = mse_db(run_tracker(engines.load(name), y, x0)[0], x)["mse_db"]
        assert kn <= -10.0 and kn <= ekf - 3.0, (name, kn, ekf)


def test_reproduce_writes_the_table_and_the_target(tmp_path):
    report = run_independent(tmp_path, quick=True, table=("ekf", "kalmannet-lorenz", "not-an-engine"),
                             missing_trackers=("ekf",))
    assert report["table2"]["results"]["not-an-engine"] == "not trained"
    assert (tmp_path / "independent.csv").is_file() and (tmp_path / "independent.json").is_file()
    assert report["target"]["target_db"] == -11.3
    assert np.isfinite(report["missing"]["results"]["ekf"]["0.5"]["mse_db"])
