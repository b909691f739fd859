"""`mbdl bench engines`: every artifact on every backend available here, measured side by side.

Per artifact and backend (torch, onnxruntime, tensorrt):
- first call: loading the engine (ONNX Runtime session / TensorRT build or cache load /
  torch module) plus its first call, in seconds;
- latency at batch 1, p50 and p99 in ms (trackers: one `step` after `reset(1)`), with the
  backends' calls interleaved so that a load change on shared cores hits all alike; the
  repeat counts are capped by a time budget per artifact and batch size (BUDGET_S);
- throughput at batch 8 and 32 (samples/s, from the median time of a call; trackers:
  steps of 8 or 32 tracks);
- memory: growth of the process RSS from before loading to after the runs (MiB;
  approximate, since allocators keep freed pages and backends share the process), and the
  PEAK RSS at batch PEAK_BATCH (issue 15: <= 1 GiB for every shipped artifact on torch and
  ONNX Runtime), measured in a fresh process per artifact and backend (mbdl_app/bench/peak_rss.py:
  imports + load + two calls; its peak after loading alone beside it).
Every artifact also gets the ratio ONNX Runtime p50 / torch p50 at batch 1 (the issue's
CPU target: <= 0.75 for CORONA and the KalmanNet step). Both runtimes use one intra-op
thread, as in a live session (engines/runtime/threads.py). Inputs are N(0, 0.3^2) draws
(the scale of the sparse-coding benchmark's observations) at the card's input size.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import exported_models
from engines.errors import BackendUnavailable, UnknownEngineError
from engines.load import load_artifact
from engines.runtime.backends import available_backends, example_shape, timed_call
from engines.runtime.threads import set_intra_op_threads
from mbdl_app.bench.peak_rss import TARGET_MIB, measure_peak

BACKENDS = ("torch", "onnxruntime", "tensorrt")
BUDGET_S = 30.0  # per artifact and batch size
MIN_CALLS = 5  # batch-1 latency rounds at least; throughput rounds: at least one
INPUT_STD = 0.3
PEAK_BATCH = 8


def _rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _input(engine, batch: int, rng: np.random.Generator) -> np.ndarray:
    shape = example_shape(engine.card, engine.info)
    return (INPUT_STD * rng.standard_normal((batch, *shape))).astype(np.float32)


def _prepare(engine, batch: int) -> None:
    if hasattr(engine, "reset"):
        engine.reset(batch)


def _load(folder: Path, backend: str, rng: np.random.Generator) -> dict[str, Any]:
    """Load `folder` on `backend` and make its first call: the engine, first-call s, RSS before."""
    gc.collect()  # the previous artifact's engines (reference cycles) must not fall into this delta
    rss = _rss_mib()
    start = time.perf_counter()
    engine = load_artifact(folder, backend)
    _prepare(engine, 1)
    timed_call(engine, _input(engine, 1, rng))
    return {"engine": engine, "first_call_s": time.perf_counter() - start, "rss_before": rss}


def _interleaved(
    engines: dict[str, Any],
    batch: int,
    calls: int,
    rng: np.random.Generator,
    budget_s: float = BUDGET_S,
    min_calls: int = MIN_CALLS,
) -> dict[str, np.ndarray]:
    """Seconds per call of each engine at `batch`, the backends' calls interleaved: `calls`
    rounds, or fewer (at least `min_calls`) once `budget_s` is spent (a CORONA window takes
    about a second on one CPU thread)."""
    for e in engines.values():
        _prepare(e, batch)
    x = _input(next(iter(engines.values())), batch, rng)
    for e in engines.values():
        timed_call(e, x)  # warm-up at this batch size (shape-specialized kernels, buffers)
    times: dict[str, list[float]] = {k: [] for k in engines}
    start = time.perf_counter()
    for i in range(calls):
        if i >= min_calls and time.perf_counter() - start > budget_s:
            break
        for k, e in engines.items():
            times[k].append(timed_call(e, x))
    return {k: np.asarray(v) for k, v in times.items()}


def bench_artifact(
    folder: Path,
    backends: tuple[str, ...],
    repeats: int,
    throughput_repeats: int,
    batches: tuple[int, ...] = (8, 32),
    peak_batch: int | None = PEAK_BATCH,
) -> dict[str, Any]:
    """One artifact on each of `backends` that can run it here; skipped ones say why. `peak_batch`
    None skips the peak-RSS processes."""
    rng = np.random.default_rng(0)
    loaded: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    for b in backends:
        try:
            loaded[b] = _load(folder, b, rng)
        except BackendUnavailable as e:
            skipped[b] = str(e)
    engines = {b: d["engine"] for b, d in loaded.items()}
    result: dict[str, Any] = {
        "artifact": folder.name,
        "path": str(folder),
        "skipped": skipped,
        "backends": {},
    }
    if not engines:
        return result
    kind = "tracker step" if hasattr(next(iter(engines.values())), "step") else "call"
    lat = _interleaved(engines, 1, repeats, rng)
    thr = {n: _interleaved(engines, n, throughput_repeats, rng, min_calls=1) for n in batches}
    for b, e in engines.items():
        result["backends"][b] = {
            "kind": kind,
            "providers": getattr(getattr(e, "session", None), "get_providers", lambda: [])(),
            "first_call_s": round(loaded[b]["first_call_s"], 4),
            "p50_ms": round(float(np.percentile(lat[b], 50) * 1e3), 4),
            "p99_ms": round(float(np.percentile(lat[b], 99) * 1e3), 4),
            "calls_batch1": len(lat[b]),
            **{f"throughput_b{n}_per_s": round(n / float(np.median(thr[n][b])), 1) for n in batches},
            "rss_growth_mib": round(_rss_mib() - loaded[b]["rss_before"], 1),
        }
    for b in result["backends"] if peak_batch else ():
        peak = measure_peak(folder, b, peak_batch)
        met = "peak_rss_mib" in peak and peak["peak_rss_mib"] <= TARGET_MIB
        result["backends"][b]["peak_rss"] = {**peak, "target_mib": TARGET_MIB, "met": met}
    if "onnxruntime" in result["backends"] and "torch" in result["backends"]:
        result["ort_over_torch_p50"] = round(
            result["backends"]["onnxruntime"]["p50_ms"] / result["backends"]["torch"]["p50_ms"], 3
        )
    return result


def _rate(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def table(report: dict[str, Any]) -> str:
    """The report as an aligned text table (one row per artifact and backend)."""
    width = max([len(a["artifact"]) for a in report["artifacts"]] + [8])
    head = (
        f"{'artifact':<{width}} {'backend':<12} {'first s':>8} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'b8 /s':>9} {'b32 /s':>9} {'RSS MiB':>8} {'peak b8':>8} {'ORT/torch':>9}"
    )
    lines = [head, "-" * len(head)]
    for a in report["artifacts"]:
        for b, r in a["backends"].items():
            ratio = a.get("ort_over_torch_p50") if b == "onnxruntime" else None
            b8, b32 = _rate(r["throughput_b8_per_s"]), _rate(r["throughput_b32_per_s"])
            peak = r.get("peak_rss", {}).get("peak_rss_mib")
            lines.append(
                f"{a['artifact']:<{width}} {b:<12} {r['first_call_s']:>8.3f} {r['p50_ms']:>9.3f} "
                f"{r['p99_ms']:>9.3f} {b8:>9} {b32:>9} "
                f"{r['rss_growth_mib']:>8.1f} {'' if peak is None else f'{peak:.0f}':>8} "
                f"{'' if ratio is None else f'{ratio:.3f}':>9}"
            )
        for b, why in a["skipped"].items():
            lines.append(f"{a['artifact']:<{width}} {b:<12} skipped: {why}")
    return "\n".join(lines)


def run_engines_bench(
    out: str | Path,
    names: list[str] | None = None,
    backends: tuple[str, ...] = BACKENDS,
    repeats: int = 300,
    throughput_repeats: int = 30,
    log=print,
) -> dict[str, Any]:
    """Benchmark the shipped artifacts (or `names`); write engines.json into `out`; return the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    folders = {d.name: d for d in exported_models.artifact_dirs()}
    unknown = sorted(set(names or ()) - set(folders))
    if unknown:
        raise UnknownEngineError(
            f"no shipped artifact named {', '.join(unknown)}; known: {', '.join(folders)}"
        )
    chosen = [folders[n] for n in (names or sorted(folders))]
    previous = set_intra_op_threads(1)
    started = time.time()
    try:
        results = []
        for folder in chosen:
            log(f"{folder.name} ...")
            results.append(bench_artifact(folder, tuple(backends), repeats, throughput_repeats))
    finally:
        set_intra_op_threads(previous)
    report = {
        "settings": {
            "repeats_batch1": repeats,
            "repeats_throughput": throughput_repeats,
            "threads": 1,
            "peak_rss_batch": PEAK_BATCH,
            "input": f"N(0, {INPUT_STD}^2) float32",
            "backends_requested": list(backends),
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        },
        "backends_here": {
            k: {"available": ok, "detail": why} for k, (ok, why) in available_backends().items()
        },
        "artifacts": results,
        "wall_time_s": round(time.time() - started, 1),
    }
    report["peak_rss_over_target"] = [f"{a['artifact']} on {b}" for a in results
                                      for b, r in a["backends"].items()
                                      if "peak_rss" in r and not r["peak_rss"]["met"]]
    (out / "engines.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(table(report))
    over = ", ".join(report["peak_rss_over_target"]) or "none"
    log(f"peak RSS at batch {PEAK_BATCH} over {TARGET_MIB} MiB: {over}")
    return report
