"""`mbdl bench tracker`: the batch-1 latency report (figures are measured by the CLI, not asserted)."""

from __future__ import annotations

import json

from mbdl_app.bench.tracker_bench import run_tracker_bench
from mbdl_app.cli import main


def test_tracker_bench_reports_p50_p99_and_writes_json(tmp_path):
    report = run_tracker_bench("ekf", tmp_path, steps=20, warmup=5, threads=1)
    assert report["engine"] == "ekf" and report["batch"] == 1 and report["steps"] == 20
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert json.loads((tmp_path / "tracker_ekf.json").read_text()) == report


def test_cli_bench_tracker_prints_the_report(tmp_path, capsys):
    try:
        main(["bench", "tracker", "ekf", "--steps", "10", "--threads", "1", "--out", str(tmp_path)])
    except SystemExit as e:
        assert e.code in (0, None)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["engine"] == "ekf"
