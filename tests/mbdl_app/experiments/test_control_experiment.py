"""mbdl_app/experiments/control.py (`mbdl reproduce control --quick`): every row, the CSV, JSON and PNG."""

import csv
import json

from mbdl_app.experiments.control import run_control


def test_quick_control_experiment_writes_the_table(tmp_path):
    report = run_control(tmp_path, quick=True, log=lambda *_: None)
    methods = [r["method"] for r in report["rows"]]
    assert len(methods) == 10 and any(m.startswith("KalmanNet in the loop") for m in methods)
    rows = {r["method"]: r for r in report["rows"]}
    assert abs(rows["LQG oracle (KF, true noise)"]["J_exact"] - 2.787) < 1e-3
    assert abs(rows["KF mismatched (r2 assumed 0.01)"]["J_exact"] - 15.483) < 1e-3
    mpc = next(r for m, r in rows.items() if m.startswith("MPC"))
    assert mpc["violations"] == 0
    assert report["monte_carlo"]["cv"]["seed"] == 17
    with open(tmp_path / "control.csv", encoding="utf-8") as f:
        assert len(list(csv.reader(f))) == 11
    assert json.loads((tmp_path / "control.json").read_text())["quick"] is True
    assert (tmp_path / "control.png").stat().st_size > 10_000
