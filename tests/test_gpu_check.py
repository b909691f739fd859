"""packaging/gpu/check.py: the prepared GPU check (torch CUDA vs ONNX Runtime CUDA vs TensorRT fp32/fp16
for CORONA, ULM, LISTA, KalmanNet: p50/p99 at batch 1 and 8, parity vs the CPU, engine cache hit).
Here it must run and skip every GPU row with the reason; on a CUDA machine the second test runs it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "packaging" / "gpu" / "check.py"
sys.path.insert(0, str(CHECK.parent))
import check  # noqa: E402  (packaging/gpu/check.py: a script)

NO_CUDA = check.cuda_missing()


def _run(tmp_path, *args, timeout=300):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(CHECK), "--out", str(out), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=tmp_path)
    return done, (json.loads(out.read_text()) if out.exists() else None)


def test_the_check_runs_anywhere_and_each_gpu_row_says_why_it_did_not_run(tmp_path):
    done, report = _run(tmp_path, "--models", "lista-cs", "kalmannet-lorenz", "--calls", "5", "--cpu-dry-run")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = report["rows"]
    assert {(r["model"], r["backend"], r["batch"]) for r in rows} == {
        (m, b, n) for m in ("LISTA", "KalmanNet") for b in (*check.BACKENDS, "ort-cpu") for n in (1, 8)}
    for r in rows:
        if r["backend"] == "ort-cpu":  # the measuring and parity code, exercised on the CPU
            assert r["status"] == "ran" and r["parity_ok"] and 0 < r["p50_ms"] <= r["p99_ms"], r
        elif NO_CUDA:
            assert r["status"] == f"skipped: {NO_CUDA}", r
        else:
            assert r["status"] == "ran" or r["status"].startswith("skipped: "), r
    assert "skipped" in done.stdout and "0 failed" in done.stdout


def test_bad_model_name_is_one_line(tmp_path):
    done, _ = _run(tmp_path, "--models", "nope")
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "nope" in done.stderr


@pytest.mark.skipif(NO_CUDA is not None, reason=f"GPU check needs CUDA: {NO_CUDA}")
def test_on_a_gpu_every_backend_meets_parity_and_tensorrt_hits_its_cache(tmp_path):
    done, report = _run(tmp_path, "--calls", "100", timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:]
    ran = [r for r in report["rows"] if r["status"] == "ran"]
    assert any(r["backend"] == "ort-cuda" for r in ran), done.stdout
    for r in ran:
        assert r["parity_ok"], r
        if r["backend"].startswith("trt"):
            assert r["second_load"] == "hit", r
