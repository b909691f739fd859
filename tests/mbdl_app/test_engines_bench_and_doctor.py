"""`mbdl bench engines`, `mbdl doctor` and `mbdl export ARTIFACT`: structure and sane values, not timing."""

import json
import shutil

import pytest
from typer.testing import CliRunner

import exported_models
from engines.artifacts import read_artifact
from mbdl_app.bench.engines_bench import run_engines_bench
from mbdl_app.cli import app
from mbdl_app.doctor import collect, render


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MBDL_CACHE_DIR", str(tmp_path / "cache"))


def test_bench_engines_measures_each_backend_and_skips_tensorrt_with_its_reason(tmp_path):
    report = run_engines_bench(
        tmp_path, names=["alista-cs"], repeats=5, throughput_repeats=2, log=lambda *a: None
    )
    assert json.loads((tmp_path / "engines.json").read_text()) == report
    (a,) = report["artifacts"]
    assert a["artifact"] == "alista-cs" and set(a["backends"]) >= {"torch", "onnxruntime"}
    for r in a["backends"].values():
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["first_call_s"] > 0 and r["kind"] == "call"
        assert r["throughput_b8_per_s"] > 0 and r["throughput_b32_per_s"] > 0
        peak = r["peak_rss"]  # a fresh process per backend: imports + load, then two calls at batch 8
        assert peak["batch"] == 8 and peak["peak_rss_mib"] >= peak["peak_rss_after_load_mib"] > 50
        assert peak["met"] == (peak["peak_rss_mib"] <= peak["target_mib"] == 1024)
    assert a["backends"]["onnxruntime"]["providers"][-1] == "CPUExecutionProvider"
    assert a["ort_over_torch_p50"] == pytest.approx(
        a["backends"]["onnxruntime"]["p50_ms"] / a["backends"]["torch"]["p50_ms"], rel=1e-2
    )
    if not report["backends_here"]["tensorrt"]["available"]:
        assert "tensorrt" in a["skipped"] and a["skipped"]["tensorrt"]


def test_doctor_reports_versions_gpus_backends_cache_qt_and_devices(tmp_path):
    report = collect()
    v = report["versions"]
    assert v["python"] and v["torch"] and v["onnx"] and v["onnxruntime"]
    assert "CPUExecutionProvider" in v["onnxruntime_providers"]
    assert v["tensorrt"] is not None or v["tensorrt_missing"]
    assert isinstance(report["gpus"], list)
    assert report["backends"]["torch"]["available"] and report["backends"]["onnxruntime-cpu"]["available"]
    assert report["cache_dir"] == str(tmp_path / "cache")
    # tests run Qt offscreen: Qt works, but no window reaches a screen
    assert report["qt"] == {
        "qt": True,
        "platform": "offscreen",
        "window": False,
        "error": "platform 'offscreen' draws no window on a screen",
    }
    assert isinstance(report["devices"], list)
    text = render(report)
    for field in (
        "python",
        "onnxruntime",
        "tensorrt",
        "gpus",
        "backends",
        "cache dir",
        "qt window",
        "devices",
    ):
        assert field in text


def test_doctor_cli_prints_json():
    done = CliRunner().invoke(app, ["doctor", "--json"])
    assert done.exit_code == 0, done.output
    assert set(json.loads(done.stdout)) == {"versions", "platform", "missing", "gpus", "backends",
                                            "cache_dir", "qt", "devices"}


def test_export_cli_writes_model_onnx_of_an_artifact_folder(tmp_path):
    folder = tmp_path / "alista-cs"
    shutil.copytree(exported_models.ROOT / "alista-cs", folder)
    (folder / "model.onnx").unlink()
    card = json.loads((folder / "card.json").read_text())
    del card["files"]["model.onnx"], card["onnx"]
    (folder / "card.json").write_text(json.dumps(card))
    done = CliRunner().invoke(app, ["export", str(folder)])
    assert done.exit_code == 0, done.output
    art = read_artifact(folder)
    assert art.card["onnx"]["sha256"] == art.card["files"]["model.onnx"] and art.card["onnx"]["opset"] == 17
    assert str(folder / "model.onnx") in done.stdout


def test_export_of_an_unknown_name_says_it_is_neither_artifact_nor_recording():
    done = CliRunner().invoke(app, ["export", "no-such-model"])
    assert done.exit_code != 0 and "neither an artifact" in str(done.exception)


def test_the_peak_of_a_fresh_process_is_its_own_not_its_grown_parents():
    """ru_maxrss on Linux carries the parent's peak at fork into the child (a bench that had grown to
    1.4 GB reported every later artifact at 1.4 GB): the measurement reads the child's own VmHWM."""
    import numpy as np

    from exported_models import ROOT
    from mbdl_app.bench.peak_rss import measure_peak

    held = np.ones(800 * 2**20 // 8)  # 800 MiB resident in this (the parent) process
    peak = measure_peak(ROOT / "kalmannet-cv", "onnxruntime", 8)
    assert held[-1] == 1.0 and 50 < peak["peak_rss_mib"] < 700, peak
