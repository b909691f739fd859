"""The KalmanNet / Table 2 harness (mbdl_app/experiments/tracking.py) on its quick sizes."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest

from mbdl_app.cli import main
from mbdl_app.experiments.tracking import (
    experiment_cases,
    grid_search,
    run_case,
    sampling_case,
    summarize,
)


def test_reproduce_table2_quick_writes_csv_json_png_next_to_the_published_figures(tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["reproduce", "table2", "--quick", "--out", str(tmp_path)])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    folder = tmp_path / "table2"
    rows = {r["method"]: r for r in csv.DictReader(open(folder / "table2.csv", encoding="utf-8"))}
    assert list(rows) == ["EKF", "UKF", "PF", "KalmanNet", "RNN (model-based)"]
    for method in ("EKF", "UKF", "PF"):
        r = rows[method]
        assert r["status"] == "ok" and math.isfinite(float(r["mse_db"])) and float(r["run_time_s"]) > 0
        assert r["backend"] == "torch"
        assert float(r["q2"]) in sampling_case(True).q2_grid
    assert rows["PF"]["published_mse_db"] == "-5.337" and rows["EKF"]["published_run_time_s"] == "5.44"
    for method in ("KalmanNet", "RNN (model-based)"):  # evaluated when its artifact exists
        assert rows[method]["status"] in ("ok", "not trained")
    assert "published   -6.432 ±0.093 dB 5.440 s" in printed
    report = json.loads((folder / "table2.json").read_text(encoding="utf-8"))
    (case,) = report["cases"]
    assert case["T"] == 60 and case["n_test"] == 2 and case["n_particles"] == 100
    assert set(case["validation_mse_db"]) == {"EKF", "UKF", "PF"}
    assert len(case["validation_mse_db"]["EKF"]) == len(case["q2_grid"]) == 5
    assert report["machine"]["torch_threads"] >= 1
    png = (folder / "table2_trajectory.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_the_kalmannet_experiment_has_the_five_anchor_settings_with_their_levels():
    cases = experiment_cases("kalmannet", quick=False)
    levels = {}
    for c in cases:
        levels.setdefault(c.setting, []).append(c.level)
    assert levels == {
        "sampling": ["T = 3000"],
        "noisy-state": [f"1/r2 = {v} dB" for v in (0, 10, 20, 30, 40)],
        "evolution": [f"1/r2 = {v} dB" for v in (10, 20, 30, 40)],
        "rotation": [f"1/r2 = {v} dB" for v in (0, 10, 20, 30)],
        "spherical": [f"1/r2 = {v} dB" for v in (-10, 0, 10, 20, 30)],
    }
    by = {(c.setting, c.level): c for c in cases}
    rot = by["rotation", "1/r2 = 30 dB"]
    assert (rot.data.obs, rot.data.angle_deg, rot.model["obs"], rot.model["angle_deg"]) == (
        "rotated", 1.0, "identity", 0.0)
    assert rot.data.r2 == pytest.approx(1e-3) and rot.data.q2 == pytest.approx(1e-5)
    assert rot.learned == {"KalmanNet": "kalmannet-lorenz-rot"}
    assert by["evolution", "1/r2 = 10 dB"].model["J"] == 2 and by["evolution", "1/r2 = 10 dB"].data.J == 5
    sph = by["spherical", "1/r2 = -10 dB"]
    assert sph.T == 20 and sph.data.q2 == pytest.approx(sph.data.r2) == pytest.approx(10.0)
    assert by["noisy-state", "1/r2 = 0 dB"].n_test == 100 and cases[0].n_test == 20
    assert cases[0].data.decimate == 2000 and cases[0].T == 3000


def test_validation_and_test_trajectories_are_independent():
    case = sampling_case(quick=True)
    x_val, _ = case.simulate("val", 2)
    x_test, y_test = case.simulate("test", 2)
    # each trajectory starts at its own x0 + 0.1 N(0, I) (chaos then separates them)
    assert np.abs(x_val[:, 0] - x_test[:, 0]).min() > 1e-4
    assert np.abs(x_test[0, 0] - x_test[1, 0]).min() > 1e-4  # no shared truth within a set
    np.testing.assert_array_equal(case.simulate("test", 2)[1], y_test)  # deterministic


def test_grid_search_keeps_the_q2_of_the_lowest_validation_mse_and_survives_divergence():
    case = replace(sampling_case(quick=True), q2_grid=(1e-8, 0.1, 100.0))
    x, y = case.simulate("val", 2)
    best, curve = grid_search(case, "ekf", x, y)
    assert set(curve) == {1e-8, 0.1, 100.0}
    assert best == min(curve, key=curve.get) == 0.1
    assert curve[1e-8] > curve[0.1] + 5  # a collapsed covariance stops listening to y


def test_a_case_reports_mse_spread_and_run_time_per_filter():
    case = replace(experiment_cases("kalmannet", quick=True)[1], q2_grid=(0.01,))
    record, first = run_case(case, log=lambda line: None)
    ekf = next(r for r in record["results"] if r["method"] == "EKF")
    x, _ = case.simulate("test", case.n_test)
    assert first["truth"].shape == (case.T, 3)
    np.testing.assert_array_equal(first["truth"], x[0])
    assert ekf["q2"] == 0.01 and ekf["run_time_s"] > 0 and ekf["mse_db_std"] >= 0
    assert ekf["delta_db"] == pytest.approx(ekf["mse_db"] - -10.45)
    kn = next(r for r in record["results"] if r["method"] == "KalmanNet")
    assert kn["status"] == "not trained" and kn["mse_db"] is None


def test_summarize_is_db_of_the_mean_and_std_of_per_sequence_db():
    mse_db, std_db = summarize(np.array([0.1, 1.0]))
    assert mse_db == pytest.approx(10 * np.log10(0.55))
    assert std_db == pytest.approx(5.0)


def test_an_unknown_experiment_is_a_value_error():
    with pytest.raises(ValueError, match="table3"):
        experiment_cases("table3", quick=True)
