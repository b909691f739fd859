"""`mbdl bench smlm`: the microscopy offline targets (issue 14), measured in one run.

On held-out sim:smlm stacks (64 x 64 pixels, 350 frames, seeds BENCH_SEED + j, a sparse 0.5 and
a dense 3 / um^2 density; the localization thresholds chosen on the validation stacks of
mbdl_app/experiments/fig8.py), every method makes one SR image per stack through its engine:

    sparcom-100           SPARCOM, 100 FISTA iterations, whole field, x4 grid (engines.load("sparcom"))
    sparcom-100-patches   the same on the anchors' 16 x 16 patches with 8-pixel overlap
    sparcom-100-x8-patches  the anchors' reference configuration: x8 grid and those patches
    lsparcom              the trained unfolding on torch, and `lsparcom-ort` on ONNX Runtime
    deep-storm            frame by frame, outputs summed (beside them; skipped when not trained)

The methods run one after the other on each stack (so a load change on the shared cores hits
all alike), one thread each. Per method: median over the stacks of the image correlation with
the filaments, of the Jaccard index (250 nm matching against the distinct emitters ON in the
stack) and of the CPU time per stack (time.process_time of the engine call on the whole stack),
over all the stacks (the targets) and per density.

Targets (`targets`, each with `met`):
- lsparcom >= sparcom-100 in median Jaccard and in median image correlation;
- lsparcom >= 10x faster per stack than sparcom-100 on the same backend (torch vs torch), both
  on the x4 grid; the ratios against the patched and the anchors' reference (x8, patches)
  configurations are reported beside it (SPARCOM's cost is its grid's: two dense products of
  the grid's side cubed per iteration, 8x more on the x8 grid);
- lsparcom on ONNX Runtime / on torch <= 0.75 (the engines' CPU target).

`run_smlm_bench(out, ...)` writes smlm.json and returns the report as a dict: the live part
(64 x 64 at 100 fps, recorded) is added under its own key by the caller.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engines
from engines.errors import EngineError
from engines.imaging.smlm_metrics import image_correlation, stack_truth
from mbdl_app.experiments.fig8 import (
    DENSITIES,
    FULL,
    QUICK,
    TRUTH_FINE_NM,
    VAL_SEED,
    Method,
    choose_fraction,
    load_engine,
    localization_matching,
    stacks,
    timed_image,
)

BENCH_SEED = 5300
SPEED_TARGET = 10.0
ORT_TARGET = 0.75
TEST_STACKS = 2  # per density (quick: 1)


def _methods(frames: int, iterations: int, lsparcom: str, deep_storm: str, per_frame_frames: int | None,
             log) -> tuple[dict[str, Method], dict[str, str]]:
    configs = {"sparcom-100": {}, "sparcom-100-patches": {"patch": 16},
               "sparcom-100-x8-patches": {"patch": 16, "upsample": 8}}
    methods = {name: Method(name, engines.load("sparcom", iterations=iterations, window=frames, **kw), False)
               for name, kw in configs.items()}
    skipped: dict[str, str] = {}
    for key, name, backend, per_frame in (("lsparcom", lsparcom, "torch", False),
                                          ("lsparcom-ort", lsparcom, "onnxruntime", False),
                                          ("deep-storm", deep_storm, "torch", True)):
        try:
            engine = load_engine(name, backend=backend)
        except EngineError as e:
            skipped[key] = f"{name} on {backend} not available here: {e}"
            log(f"bench smlm: skipping {key}: {skipped[key]}")
            continue
        if not per_frame and engine.info.window > frames:
            skipped[key] = f"{name} takes stacks of {engine.info.window} frames, these have {frames}"
            continue
        methods[key] = Method(key, engine, per_frame, per_frame_frames if per_frame else None)
    return methods, skipped


def _median(v: list[float]) -> float:
    return round(float(np.median(v)), 4)


def run_smlm_bench(out: str | Path, quick: bool = False, lsparcom: str = "lsparcom",
                   deep_storm: str = "deep-storm", log=print) -> dict[str, Any]:
    """Measure the targets (module docstring); write smlm.json into `out`; return the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = QUICK if quick else FULL
    n_test = 1 if quick else TEST_STACKS
    torch.set_num_threads(1)
    methods, skipped = _methods(size.frames, size.sparcom_iterations[0], lsparcom, deep_storm,
                                size.per_frame_frames, log)
    per_stack: dict[str, dict[str, list]] = {m: {"density": [], "image_correlation": [], "jaccard": [],
                                                  "cpu_s": [], "wall_s": []} for m in methods}
    fractions: dict[str, dict[str, float]] = {m: {} for m in methods}
    started = time.time()
    for label, density in DENSITIES.items():
        val = stacks(VAL_SEED, density, size.val, size)
        test = stacks(BENCH_SEED, density, n_test, size)
        for name, method in methods.items():
            fractions[name][label] = choose_fraction([method.image(s.frames) for s in val], val)[0]
        for s in test:
            truth = stack_truth(s.positions)
            for name, method in methods.items():
                image, cpu, wall = timed_image(method, s.frames)
                r = per_stack[name]
                r["density"].append(label)
                r["image_correlation"].append(round(image_correlation(image, s.filament, TRUTH_FINE_NM), 4))
                m = localization_matching(image, s, fractions[name][label], truth)
                r["jaccard"].append(round(m.jaccard, 4))
                r["cpu_s"].append(round(cpu, 4))
                r["wall_s"].append(round(wall, 4))
        log(f"bench smlm: {label} done ({time.time() - started:.0f} s)")
    medians = {m: {k: _median(v) for k, v in r.items() if k != "density"} for m, r in per_stack.items()}
    by_density = {label: {m: {k: _median([x for x, d in zip(v, r["density"], strict=True) if d == label])
                              for k, v in r.items() if k != "density"} for m, r in per_stack.items()}
                  for label in DENSITIES}
    report: dict[str, Any] = {
        "bench": "smlm", "quick": quick, "medians": medians, "medians_by_density": by_density,
        "per_stack": per_stack,
        "threshold_fractions": fractions, "skipped": skipped, "targets": targets(medians),
        "setup": {"field_px": size.field, "frames_per_stack": size.frames, "densities_per_um2": DENSITIES,
                  "test_stacks_per_density": n_test, "seed": BENCH_SEED, "val_seed": VAL_SEED,
                  "sparcom_iterations": size.sparcom_iterations[0], "threads": 1,
                  "timing": "CPU seconds of the engine call on one whole stack (per-frame engines: all its "
                            "frames), methods interleaved per stack"},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
                    "torch": torch.__version__},
        "wall_time_s": round(time.time() - started, 1),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "smlm.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, t in report["targets"].items():
        log(f"{name}: {t['measured']} (target {t['target']}): {'met' if t['met'] else 'MISSED'}")
    log(f"report: {out / 'smlm.json'}")
    return report


def targets(medians: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The issue's offline targets from the per-method medians (a missing method: not met)."""
    names = ("lsparcom", "sparcom-100", "sparcom-100-patches", "sparcom-100-x8-patches", "lsparcom-ort")
    ls, sp, pt, ref, ort = (medians.get(k) for k in names)
    out: dict[str, dict[str, Any]] = {}
    for metric in ("jaccard", "image_correlation"):
        measured = None if ls is None or sp is None else {"lsparcom": ls[metric], "sparcom-100": sp[metric]}
        out[f"lsparcom_{metric}_at_least_sparcom100"] = {
            "target": "lsparcom >= sparcom-100 (medians)", "measured": measured,
            "met": measured is not None and measured["lsparcom"] >= measured["sparcom-100"]}

    def over_lsparcom(other: dict[str, float] | None) -> float | None:
        return None if ls is None or other is None else round(other["cpu_s"] / ls["cpu_s"], 2)

    speed = over_lsparcom(sp)
    out["lsparcom_speedup_over_sparcom100_torch"] = {
        "target": SPEED_TARGET, "measured": speed, "met": speed is not None and speed >= SPEED_TARGET,
        "against_patched_sparcom100": over_lsparcom(pt),
        "against_anchors_reference_sparcom100_x8_patches": over_lsparcom(ref)}
    ratio = None if ls is None or ort is None else round(ort["cpu_s"] / ls["cpu_s"], 3)
    out["lsparcom_ort_over_torch"] = {"target": ORT_TARGET, "measured": ratio,
                                      "met": ratio is not None and ratio <= ORT_TARGET}
    return out
