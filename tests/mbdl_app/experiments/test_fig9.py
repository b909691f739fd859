"""`mbdl reproduce fig9 --quick`: SER curves of every detector, the checks, same-run timings, resuming."""

from __future__ import annotations

import json

from mbdl_app.experiments.fig9 import CSIS, DETECTORS, QUICK, points, run_fig9, run_sbrnns


def test_quick_fig9_writes_every_detectors_ser_with_both_csi_the_checks_and_timings(tmp_path):
    result = run_fig9(tmp_path, quick=True, log=lambda m: None)
    assert result["complete"] and (tmp_path / "fig9.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "fig9.json").read_text())["ser"] == result["ser"]
    csv_rows = (tmp_path / "fig9.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(DETECTORS) * len(CSIS) * len(QUICK.snrs)
    for name in DETECTORS:
        for csi in CSIS:
            curve = [result["ser"][name][csi][str(x)] for x in QUICK.snrs]
            assert all(0 <= v <= 1 for v in curve)
        t = result["timing"][name]
        assert t["block_latency_ms"] > 0 and t["live_symbols_per_s"] > 0 and t["detect_cpu_s"] > 0
    bcjr = result["ser"]["bcjr"]["perfect"]
    assert bcjr["8"] < bcjr["0"]  # more SNR, fewer errors
    assert all(result["ser"]["bcjr"]["perfect"][str(x)] >= result["matched_filter_bound"][str(x)]
               for x in QUICK.snrs)
    assert set(result["targets"]) >= {"bcjrnet_within_1_db_of_bcjr_perfect_csi", "bcjrnet_beats_sbrnn",
                                      "bcjrnet_beats_bcjr_uncertain_csi_at_6_db_and_above", "no_isi"
                                      "_ser_equals_q_sqrt_snr_within_5_percent"}
    assert result["timing"]["bcjrnet"]["nets"] == len(QUICK.gammas) * len(QUICK.snrs) * len(CSIS)

    # the SBRNN points are on disk: a rerun takes them instead of training again
    logged: list[str] = []
    ser: dict = {}
    timing = {"sbrnn": {"train_cpu_s": 0.0, "detect_cpu_s": 0.0, "nets": 0}}
    run_sbrnns(points(QUICK), QUICK, ser, timing, tmp_path, logged.append)
    assert not any("sbrnn" in m for m in logged)
    for x in QUICK.snrs:
        mean = sum(ser[("sbrnn", "perfect", x, g)] for g in QUICK.gammas) / len(QUICK.gammas)
        assert mean == result["ser"]["sbrnn"]["perfect"][str(x)]
