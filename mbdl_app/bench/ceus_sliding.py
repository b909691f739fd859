"""`mbdl bench ceus --sliding`: live sliding-window CORONA (hop 1), reference and fast student side by side.

Issue 15's speed target: a live sliding-window CORONA at >= 15 windows/s on 2 cores at MSE <= 0.12
on fig6's test set, p99 reported. Three parts, all in one run:

1. live: `sim:ceus` at SIZE x SIZE, `rate` frames/s (default 100; the clinician path runs 20, which
   caps a hop-1 sliding window at 20 windows/s), with ONE engine at hop 1 (a window of the last
   20 frames per result, the newest frame's S shown), for `duration` s per engine; the engines
   run one after another in `rounds` alternating rounds (reference, fast, reference, fast, ...:
   a load change on shared cores hits both), each at intra-op threads 1 and 2 where asked (torch's
   and, since issue 15 part 2, the ONNX Runtime session's: `Session(intra_op_threads=...)`).
   Per run: windows/s (= results/s at hop 1), per-window compute latency p50/p99, end-to-end p99,
   frames skipped, live MSE (dB); medians over rounds in the summary;
2. quality: MSE of S on fig6's test set (mbdl_app/experiments/fig6.py: 64 held-out windows 32 x 32
   x 20, simulator seed 4), each engine's torch module;
3. the CPU limit: FLOPs per window at SIZE (convolutions and matrix products, torch's
   FlopCounterMode) divided by this CPU's sustained FLOP/s (a 512 x 512 float32 matrix product,
   measured now at 1 and 2 threads): the windows/s that no implementation of that network exceeds
   here, beside the measured one; and isolated batch-1 latencies of each engine on each runtime
   (interleaved calls), the measured options behind the choice.

Writes ceus_sliding.json; prints one table. Returns 0 when the fast engine meets the target (its
median windows/s over rounds at its best thread count and its fig6 MSE), else 1.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.report import status_line
from mbdl_app.session.session import Session

REFERENCE, FAST = "corona-ceus", "corona-fast"
TARGET_WINDOWS_PER_S, TARGET_MSE = 15.0, 0.12
KEYS = ("results", "skipped", "latency_p50_ms", "latency_p99_ms", "e2e_p99_ms", "mse_db_overall", "backend")


def live_run(engine: str, size: int, duration: float, threads: int, backend: str = "auto",
             rate: float = 100.0) -> dict[str, Any]:
    """One engine at hop 1 on sim:ceus (SIZE x SIZE @ `rate` Hz) for `duration` s."""
    cfg = SessionConfig(sources=[SourceConfig(name="ceus", uri=f"sim:ceus?size={size}&rate={rate:g}")],
                        engines=[EngineConfig(name=engine, hop=1, backend=backend)])
    session = Session(cfg, intra_op_threads=threads)
    session.start()
    try:
        session.run(duration, tick=5.0,
                    on_tick=lambda st: print(status_line(st), file=sys.stderr, flush=True))
    finally:
        session.stop()
    st = session.status()
    e = st.engines[engine]
    src = st.sources["ceus"]
    return {**{k: e[k] for k in KEYS}, "threads": threads, "duration_s": round(st.elapsed_s, 2),
            "windows_per_s": round(e["results"] / st.elapsed_s, 3),
            "source_fps": round(src["items"] / st.elapsed_s, 2), "load_avg_1m": round(os.getloadavg()[0], 2)}


def fig6_mse(engine: str) -> float:
    """MSE of S of `engine` (torch) on fig6's test set."""
    import torch

    import engines
    from drivers.sim.ceus import CeusParams, windows
    from mbdl_app.experiments.fig6 import FULL, TEST_SEED, WINDOW

    w = windows(CeusParams(seed=TEST_SEED), FULL.windows, WINDOW, FULL.patch)
    module = engines.load(engine, backend="torch").module
    with torch.inference_mode():
        S = module(torch.from_numpy(w["D"]))
    return float(((S.double() - torch.from_numpy(w["S"]).double()) ** 2).mean())


def flops_per_window(engine: str, size: int) -> float:
    """Floating-point operations of one window (1, 20, 2, size, size): convolutions and matrix
    products (the element-wise work is not counted: the estimate is a bound)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import engines

    module = engines.load(engine, backend="torch").module
    x = torch.zeros(1, 20, 2, size, size)
    x.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(x)
    return float(counter.get_total_flops())


def sustained_flops(threads: int, n: int = 512, seconds: float = 1.0) -> float:
    """This CPU's sustained float32 FLOP/s now: the median of repeated n x n matrix products."""
    import torch

    from engines.runtime.threads import set_intra_op_threads

    previous = set_intra_op_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        rates, start = [], time.perf_counter()
        while time.perf_counter() - start < seconds or len(rates) < 5:
            t = time.perf_counter()
            a @ b
            rates.append(2 * n**3 / (time.perf_counter() - t))
        return float(statistics.median(rates))
    finally:
        set_intra_op_threads(previous)


def isolated_latency(names: list[str], size: int, threads: int, calls: int = 7) -> dict[str, Any]:
    """Batch-1 latency (ms, median and min) of each engine on torch and ONNX Runtime at `threads`
    intra-op threads (torch's setting and the ORT session's), calls interleaved. ONNX Runtime runs
    only where the graph was traced at `size` (model.onnx has the card's fixed H x W)."""
    import onnxruntime as ort

    import exported_models
    from engines.load import load_artifact
    from engines.runtime import onnxruntime_runtime as ort_rt
    from engines.runtime.backends import timed_call
    from engines.runtime.threads import set_intra_op_threads

    previous = set_intra_op_threads(threads)
    try:
        engines_ = {f"{n} torch": load_artifact(exported_models.ROOT / n, "torch") for n in names}
        for n in names:  # the same graph and level in a session with `threads` intra-op threads
            if engines_[f"{n} torch"].card["input"]["shape"][-1] != size:
                continue
            e = engines_[f"{n} onnxruntime"] = load_artifact(exported_models.ROOT / n, "onnxruntime")
            levels = {int(v): k for k, v in ort.GraphOptimizationLevel.__members__.items()}
            level = levels[int(e.session.get_session_options().graph_optimization_level)]
            e.session = ort.InferenceSession(str(exported_models.ROOT / n / "model.onnx"),
                                             ort_rt.session_options(threads, level),
                                             providers=[ort_rt.CPU_PROVIDER])
        x = (0.3 * np.random.default_rng(0).standard_normal((1, 20, 2, size, size))).astype(np.float32)
        for e in engines_.values():
            timed_call(e, x)
        times: dict[str, list[float]] = {k: [] for k in engines_}
        for _ in range(calls):
            for k, e in engines_.items():
                times[k].append(timed_call(e, x) * 1e3)
    finally:
        set_intra_op_threads(previous)
    return {k: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1)}
            for k, v in times.items()}


def run_sliding_bench(out: Path, duration: float = 20.0, size: int = 128, rounds: int = 2,
                      threads: tuple[int, ...] = (1, 2), names: tuple[str, ...] = (REFERENCE, FAST),
                      rate: float = 100.0) -> int:
    """All three parts; writes ceus_sliding.json; 0 when the fast engine (the last of `names`)
    meets the target, else 1."""
    if rate <= 0 or not names or not threads or min(threads) < 1:
        raise ValueError(f"sliding bench: rate must be > 0 (got {rate}), engines and threads (>= 1) "
                         f"non-empty (got {names}, {threads})")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    load_start = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {f"{n} t{t}": [] for n in names for t in threads}
    for _ in range(rounds):
        for t in threads:
            for n in names:
                print(f"live: {n} hop 1, {t} thread(s) ...", file=sys.stderr, flush=True)
                runs[f"{n} t{t}"].append(live_run(n, size, duration, t, rate=rate))
    live = {k: {"windows_per_s_median": statistics.median(r["windows_per_s"] for r in v),
                "latency_p50_ms_median": statistics.median(r["latency_p50_ms"] for r in v),
                "latency_p99_ms_median": statistics.median(r["latency_p99_ms"] for r in v),
                "e2e_p99_ms_median": statistics.median(r["e2e_p99_ms"] for r in v), "runs": v}
            for k, v in runs.items()}
    gemm = {t: sustained_flops(t) for t in threads}
    engines_: dict[str, Any] = {}
    for n in names:
        flops = flops_per_window(n, size)
        engines_[n] = {"fig6_mse_S": round(fig6_mse(n), 5), "gflop_per_window": round(flops / 1e9, 3),
                       "cpu_limit_windows_per_s": {f"t{t}": round(g / flops, 1) for t, g in gemm.items()}}
    isolated = {f"t{t}": isolated_latency(list(names), size, t) for t in threads}
    fast = names[-1]
    best = max(threads, key=lambda t: live[f"{fast} t{t}"]["windows_per_s_median"])
    measured = live[f"{fast} t{best}"]["windows_per_s_median"]
    met = measured >= TARGET_WINDOWS_PER_S and engines_[fast]["fig6_mse_S"] <= TARGET_MSE
    report = {
        "bench": "ceus-sliding", "size": size, "rate_hz": rate, "window": 20, "hop": 1,
        "duration_s_per_run": duration,
        "rounds": rounds, "live": live, "engines": engines_,
        "sustained_gflop_s": {f"t{t}": round(g / 1e9, 1) for t, g in gemm.items()},
        "isolated_batch1": isolated,
        "target": {"engine": fast, "windows_per_s_at_least": TARGET_WINDOWS_PER_S, "mse_at_most": TARGET_MSE,
                   "threads": best, "measured_windows_per_s": measured,
                   "measured_fig6_mse": engines_[fast]["fig6_mse_S"], "met": met},
        "machine": {"cpus": os.cpu_count(), "load_avg_at_start": [round(v, 2) for v in load_start],
                    "load_avg_at_end": [round(v, 2) for v in os.getloadavg()]},
        "wall_time_s": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    text = json.dumps(report, indent=2, default=float) + "\n"
    (out / "ceus_sliding.json").write_text(text, encoding="utf-8")
    print(table(report))
    print(f"report: {out / 'ceus_sliding.json'}")
    return 0 if met else 1


def table(report: dict[str, Any]) -> str:
    """The live medians beside the CPU limit and the fig6 MSE, one row per engine and thread count."""
    head = (f"{'engine':<14} {'thr':>3} {'win/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'e2e p99':>8} "
            f"{'limit/s':>8} {'GFLOP':>6} {'fig6 MSE':>8}")
    lines = [head, "-" * len(head)]
    for k, v in report["live"].items():
        name, t = k.rsplit(" t", 1)
        e = report["engines"][name]
        lines.append(f"{name:<14} {t:>3} {v['windows_per_s_median']:>7.2f} "
                     f"{v['latency_p50_ms_median']:>8.1f} "
                     f"{v['latency_p99_ms_median']:>8.1f} {v['e2e_p99_ms_median']:>8.0f} "
                     f"{e['cpu_limit_windows_per_s'][f't{t}']:>8.1f} {e['gflop_per_window']:>6.2f} "
                     f"{e['fig6_mse_S']:>8.4f}")
    tgt = report["target"]
    m = report["machine"]
    lines.append(f"target {tgt['engine']} >= {tgt['windows_per_s_at_least']:.0f} windows/s at fig6 MSE <= "
                 f"{tgt['mse_at_most']}: {tgt['measured_windows_per_s']:.2f}/s ({tgt['threads']} thread(s), "
                 f"source {report.get('rate_hz', 100.0):g} Hz), "
                 f"MSE {tgt['measured_fig6_mse']:.4f}: {'met' if tgt['met'] else 'MISSED'}; load average "
                 f"{m['load_avg_at_start'][0]} -> {m['load_avg_at_end'][0]}")
    return "\n".join(lines)
