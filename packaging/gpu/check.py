"""The GPU check of issue 18, prepared to run in one go on a machine with an NVIDIA GPU:

    python packaging/gpu/check.py [--out gpu_check.json] [--calls 200] [--models corona-ceus ...]

For CORONA, ULM, LISTA and KalmanNet (the shipped artifacts corona-ceus, ulm-lista, lista-cs,
kalmannet-lorenz), on each GPU backend (torch on CUDA, ONNX Runtime's CUDA provider, TensorRT fp32 and
fp16), at batch 1 and 8: latency p50/p99 (ms, the call as an engine makes it: host input, host
output), parity against ONNX Runtime on the CPU on the same input (max |gpu - cpu| / max |cpu|), and
for TensorRT whether a second load of the same engine hits the engine cache (no rebuild).

It runs anywhere: a row whose backend cannot run here says why ("skipped: no CUDA" on a machine
without an NVIDIA GPU, "skipped: TensorRT unavailable: ..." where the GPU has no TensorRT), and the
script exits 0 unless a row that ran failed its parity bound or the cache check. The engine cache
goes to a fresh folder (MBDL_CACHE_DIR) unless --keep-cache, so the first load builds.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

MODELS = {"CORONA": "corona-ceus", "ULM": "ulm-lista", "LISTA": "lista-cs", "KalmanNet": "kalmannet-lorenz"}
BACKENDS = ("torch-cuda", "ort-cuda", "trt-fp32", "trt-fp16")
BATCHES = (1, 8)
# parity bounds on max |gpu - cpu| / max |cpu| (TF32/fp16 accumulate differently from the CPU)
BOUND = {"torch-cuda": 1e-3, "ort-cuda": 1e-3, "trt-fp32": 1e-3, "trt-fp16": 2e-2, "ort-cpu": 1e-6}


def cuda_missing() -> str | None:
    """Why nothing can run on CUDA here, or None when an NVIDIA GPU is present."""
    from mbdl_app.doctor import platform_report

    p = platform_report()
    if not (p["jetson"]["jetson"] or p["cuda"]["driver"]):
        return "no CUDA (no NVIDIA driver, not a Jetson)"
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA (torch sees no CUDA device)"
    return None


def _input(card: dict, info, batch: int, rng) -> np.ndarray:
    from engines.runtime.backends import example_shape

    shape = example_shape(card, info)
    return (0.3 * rng.standard_normal((batch, *shape))).astype(np.float32)


def _call(engine, x: np.ndarray) -> np.ndarray:
    if hasattr(engine, "step"):
        return np.asarray(engine.step(x).mean)
    return np.asarray(engine(x))


def _latencies(engine, x: np.ndarray, calls: int) -> tuple[float, float]:
    if hasattr(engine, "reset"):
        engine.reset(len(x))
    for _ in range(5):  # warm-up: lazy allocations, autotuning
        _call(engine, x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        _call(engine, x)
        times.append(time.perf_counter() - t0)
    ms = 1e3 * np.asarray(times)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


class TorchCuda:
    """A torch engine with its nn.Module moved to CUDA: host input in, host output out."""

    def __init__(self, engine) -> None:
        import torch

        modules = [v for v in vars(engine).values() if isinstance(v, torch.nn.Module)]
        if not modules:
            raise RuntimeError("the torch engine holds no nn.Module to move to CUDA")
        if hasattr(engine, "step"):
            raise RuntimeError("the torch tracker engine steps on the CPU only (its state lives in numpy)")
        self.module = modules[0].to("cuda").eval()
        self.info = engine.info
        self._torch = torch

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            y = self.module(torch.from_numpy(x).to("cuda"))
            return y.float().cpu().numpy()


def _load(backend: str, folder: Path):
    """(engine, cache) for `backend`; cache: None, or "built"/"hit" for TensorRT's first load."""
    from engines.load import load_artifact

    if backend == "torch-cuda":
        if importlib.util.find_spec("torch") is None:
            raise RuntimeError("skipped: torch is not installed")
        return TorchCuda(load_artifact(folder, "torch")), None
    if backend == "ort-cpu":  # --cpu-dry-run: the rows' code path on a machine without a GPU
        return _cpu_reference(folder), None
    if backend == "ort-cuda":
        from engines.runtime.onnxruntime_runtime import available

        ok, why = available("gpu")
        if not ok:
            raise RuntimeError(f"skipped: {why}")
        engine = load_artifact(folder, "onnxruntime")
        provider = engine.session.get_providers()[0]
        if provider == "CPUExecutionProvider":
            raise RuntimeError("skipped: ONNX Runtime chose the CPU")
        return engine, None
    precision = backend.split("-")[1]
    from engines.runtime.tensorrt_runtime import available

    ok, why = available()
    if not ok:
        raise RuntimeError(f"skipped: TensorRT unavailable: {why}")
    engine = load_artifact(folder, "tensorrt", precision=precision)
    return engine, ("built" if getattr(engine, "built", False) else "hit")


def check(models: dict[str, str], calls: int, cpu_dry_run: bool = False) -> list[dict]:
    """The rows; `cpu_dry_run` adds an "ort-cpu" row per model that runs the same measuring and
    parity code on the CPU (a check of this script where no GPU is)."""
    import exported_models

    reason = cuda_missing()
    rows = []
    rng = np.random.default_rng(0)
    for label, name in models.items():
        folder = exported_models.ROOT / name
        cpu = None  # the CPU reference, loaded when a GPU row first needs it
        for backend in BACKENDS + (("ort-cpu",) if cpu_dry_run else ()):
            base = {"model": label, "artifact": name, "backend": backend}
            if reason and backend != "ort-cpu":
                rows += [{**base, "batch": b, "status": f"skipped: {reason}"} for b in BATCHES]
                continue
            try:
                engine, cache = _load(backend, folder)
            except Exception as e:  # one row per batch says why this backend did not run
                msg = str(e) if str(e).startswith("skipped:") else f"failed: {type(e).__name__}: {e}"
                rows += [{**base, "batch": b, "status": msg} for b in BATCHES]
                continue
            second = None
            if cache is not None:  # the same engine again: it must come from the cache now
                second = "hit" if not getattr(_load(backend, folder)[0], "built", True) else "rebuilt"
            if cpu is None:
                cpu = _cpu_reference(folder)
            for b in BATCHES:
                x = _input(engine_card(folder), engine.info, b, rng)
                row = {**base, "batch": b}
                try:
                    p50, p99 = _latencies(engine, x, calls if b == 1 else max(10, calls // 4))
                    if hasattr(engine, "reset"):
                        engine.reset(b)
                        cpu.reset(b)
                    y, ref = _call(engine, x), _call(cpu, x)
                    err = float(np.max(np.abs(y - ref)) / max(float(np.max(np.abs(ref))), 1e-12))
                    row.update(status="ran", p50_ms=round(p50, 3), p99_ms=round(p99, 3),
                               parity_rel_err=err, parity_bound=BOUND[backend],
                               parity_ok=bool(err <= BOUND[backend]))
                    if cache is not None:
                        row.update(first_load=cache, second_load=second, cache_ok=second == "hit")
                except Exception as e:
                    row["status"] = f"failed: {type(e).__name__}: {e}"
                rows.append(row)
    return rows


def engine_card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def _cpu_reference(folder: Path):
    """The artifact on ONNX Runtime's CPU provider, through the same engine stack as the GPU rows:
    load_artifact picks the GPU when ONNX Runtime offers one, so the GPU providers are hidden from
    it while this one engine is built (its session keeps the CPU provider afterwards)."""
    import onnxruntime

    from engines.load import load_artifact

    offered = onnxruntime.get_available_providers
    onnxruntime.get_available_providers = lambda: ["CPUExecutionProvider"]
    try:
        return load_artifact(folder, "onnxruntime")
    finally:
        onnxruntime.get_available_providers = offered


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<10} {'backend':<11} {'batch':>5}  result"]
    for r in rows:
        if r["status"] != "ran":
            result = r["status"]
        else:
            result = (f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  parity {r['parity_rel_err']:.1e} "
                      f"({'ok' if r['parity_ok'] else 'OVER'} <= {r['parity_bound']:g})")
            if "second_load" in r:
                result += f"  cache: {r['first_load']} then {r['second_load']}"
        lines.append(f"{r['model']:<10} {r['backend']:<11} {r['batch']:>5}  {result}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--calls", type=int, default=200, help="calls per latency at batch 1 (batch 8: 1/4)")
    ap.add_argument("--models", nargs="*", default=list(MODELS.values()),
                    help=f"artifacts (default: {' '.join(MODELS.values())})")
    ap.add_argument("--keep-cache", action="store_true", help="use the user's engine cache as it is")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="also run each model on ONNX Runtime's CPU provider (checks this script)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.models) - set(MODELS.values()))
    if unknown:
        print(f"check.py: --models {', '.join(unknown)}: expected some of {', '.join(MODELS.values())}",
              file=sys.stderr)
        return 2
    models = {k: v for k, v in MODELS.items() if v in args.models}
    with tempfile.TemporaryDirectory(prefix="mbdl-gpu-cache-") as tmp:
        if not args.keep_cache:
            os.environ["MBDL_CACHE_DIR"] = tmp
        rows = check(models, args.calls, args.cpu_dry_run)
    report = {"load_average": os.getloadavg(), "cuda": cuda_missing() or "present", "rows": rows}
    args.out.write_text(json.dumps(report, indent=2))
    print(table(rows))
    print(f"report: {args.out}")
    ran = [r for r in rows if r["status"] == "ran"]
    bad = [r for r in rows if r["status"].startswith("failed")]
    bad += [r for r in ran if not r["parity_ok"] or r.get("cache_ok") is False]
    print(f"{len(ran)} ran, {len(rows) - len(ran) - len(bad)} skipped, {len(bad)} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
