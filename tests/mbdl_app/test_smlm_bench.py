"""`mbdl bench smlm`: the microscopy offline targets measured in one run, reported as JSON."""

import json

from mbdl_app.bench.smlm_bench import run_smlm_bench, targets


def test_quick_bench_reports_medians_for_each_method_and_every_target(tmp_path):
    report = run_smlm_bench(tmp_path, quick=True, lsparcom=str(tmp_path / "none"),
                            deep_storm=str(tmp_path / "none"), log=lambda _: None)
    saved = json.loads((tmp_path / "smlm.json").read_text())
    assert saved["medians"] == report["medians"]
    for name in ("sparcom-100", "sparcom-100-patches", "sparcom-100-x8-patches"):
        m = report["medians"][name]
        assert m["cpu_s"] > 0 and 0.0 <= m["jaccard"] <= 1.0
    assert set(report["skipped"]) == {"lsparcom", "lsparcom-ort", "deep-storm"}
    assert set(report["targets"]) == {"lsparcom_jaccard_at_least_sparcom100",
                                      "lsparcom_image_correlation_at_least_sparcom100",
                                      "lsparcom_speedup_over_sparcom100_torch", "lsparcom_ort_over_torch"}
    assert not any(t["met"] for t in report["targets"].values())  # nothing to compare without lsparcom


def test_targets_compare_medians_and_the_speed_ratio():
    medians = {"lsparcom": {"jaccard": 0.5, "image_correlation": 0.8, "cpu_s": 0.01},
               "lsparcom-ort": {"jaccard": 0.5, "image_correlation": 0.8, "cpu_s": 0.006},
               "sparcom-100": {"jaccard": 0.4, "image_correlation": 0.85, "cpu_s": 0.12},
               "sparcom-100-patches": {"jaccard": 0.4, "image_correlation": 0.85, "cpu_s": 0.3},
               "sparcom-100-x8-patches": {"jaccard": 0.4, "image_correlation": 0.85, "cpu_s": 2.0}}
    t = targets(medians)
    assert t["lsparcom_jaccard_at_least_sparcom100"]["met"]
    assert not t["lsparcom_image_correlation_at_least_sparcom100"]["met"]
    speed = t["lsparcom_speedup_over_sparcom100_torch"]
    assert speed["measured"] == 12.0 and speed["met"] and speed["against_patched_sparcom100"] == 30.0
    assert speed["against_anchors_reference_sparcom100_x8_patches"] == 200.0
    assert t["lsparcom_ort_over_torch"]["measured"] == 0.6 and t["lsparcom_ort_over_torch"]["met"]
