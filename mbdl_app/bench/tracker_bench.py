"""`mbdl bench tracker NAME`: the batch-1 step latency of one tracker, as the live session runs it.

The tracker (engines.load(NAME, backend=...)) filters one Lorenz trajectory (sim:lorenz
defaults, seed BENCH_SEED) one observation at a time with batch 1, after `warmup` steps;
every `TrackerEngine.step` call is timed with time.perf_counter (numpy in, numpy out:
what a session worker pays). With `threads`, torch uses that many intra-op threads.
Figures: p50, p99 and max latency in ms over `steps` steps, and the issue's target
(KalmanNet: p99 <= 1 ms on 2 cores). Writes tracker_<NAME>.json into `out`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engines
from drivers.sim.lorenz import LorenzParams, LorenzSimulator

BENCH_SEED = 9001
TARGET_P99_MS = 1.0


def run_tracker_bench(name: str, out: Path | None = None, steps: int = 5000, warmup: int = 200,
                      threads: int = 2, backend: str = "torch") -> dict[str, Any]:
    """Time `steps` batch-1 steps of tracker `name`; returns (and writes) the report."""
    torch.set_num_threads(threads)
    engine = engines.load(name, backend=backend)
    _, y = LorenzSimulator(LorenzParams(seed=BENCH_SEED)).trajectories(1, warmup + steps)
    engine.reset(1)
    for t in range(warmup):
        engine.step(y[:, t])
    lat = np.empty(steps)
    for t in range(steps):
        start = time.perf_counter()
        engine.step(y[:, warmup + t])
        lat[t] = time.perf_counter() - start
    ms = 1e3 * lat
    report = {
        "engine": name, "backend": engine.info.backend, "batch": 1, "steps": steps, "warmup": warmup,
        "torch_threads": threads, "cpus_visible": len(os.sched_getaffinity(0)),
        "p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "max_ms": round(float(ms.max()), 4), "target_p99_ms": TARGET_P99_MS,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"tracker_{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return report
