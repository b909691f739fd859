"""`mbdl bench ceus --sliding`: both engines at hop 1, fig6 MSE and the CPU limit, as JSON (tiny frames)."""

import json

import pytest

from mbdl_app.bench.ceus_sliding import FAST, REFERENCE, run_sliding_bench, sustained_flops


def test_sustained_flops_is_a_positive_rate():
    assert sustained_flops(1, n=64, seconds=0.05) > 1e6


@pytest.mark.slow
def test_sliding_bench_reports_both_engines_side_by_side_with_fig6_mse_and_cpu_limit(tmp_path):
    rc = run_sliding_bench(tmp_path, duration=2.0, size=24, rounds=1, threads=(1,))
    report = json.loads((tmp_path / "ceus_sliding.json").read_text())
    assert rc == (0 if report["target"]["met"] else 1)
    for name in (REFERENCE, FAST):
        (run,) = report["live"][f"{name} t1"]["runs"]
        assert run["results"] > 0 and run["latency_p99_ms"] >= run["latency_p50_ms"] > 0
        assert run["windows_per_s"] == pytest.approx(run["results"] / run["duration_s"], rel=1e-2)
        e = report["engines"][name]
        assert 0 < e["fig6_mse_S"] < 0.3 and e["gflop_per_window"] > 0
        assert e["cpu_limit_windows_per_s"]["t1"] > 0
        assert report["isolated_batch1"]["t1"][f"{name} torch"]["median_ms"] > 0
    assert report["engines"][FAST]["gflop_per_window"] < report["engines"][REFERENCE]["gflop_per_window"]


def test_a_bad_rate_or_empty_engine_list_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="rate must be > 0"):
        run_sliding_bench(tmp_path, rate=0.0)
    with pytest.raises(ValueError, match="non-empty"):
        run_sliding_bench(tmp_path, names=())
