"""`mbdl bench ceus`: the live CORONA / RPCA-FISTA run on sim:ceus, reported as JSON (tiny frames)."""

import json

import pytest

from mbdl_app.bench.ceus_bench import run_ceus_bench


@pytest.mark.slow
def test_ceus_bench_reports_results_and_windows_per_second_for_blocks_and_sliding(tmp_path):
    rc = run_ceus_bench(tmp_path, duration=3.0, size=24)
    report = json.loads((tmp_path / "ceus_live.json").read_text())
    assert rc == (0 if report["target"]["met"] else 1)
    blocks, sliding = report["blocks"]["engines"], report["sliding_corona"]["engines"]
    assert blocks["corona-ceus"]["hop"] == 20 and sliding["corona-ceus"]["hop"] == 1
    for e in blocks.values():
        assert e["results"] > 0 and e["results"] % 20 == 0  # whole blocks of per-frame results
        assert e["windows_per_s"] == pytest.approx(e["results_per_s"] / 20, abs=1e-3)
        assert e["latency_p99_ms"] >= e["latency_p50_ms"] > 0
    assert report["target"]["measured"] == blocks["corona-ceus"]["results_per_s"]
    assert report["blocks"]["source"]["items"] > 0
