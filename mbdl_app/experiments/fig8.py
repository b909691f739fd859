"""Reproduce seed Fig. 8 (microscopy super-resolution by deep unfolding): `mbdl reproduce fig8`.

Held-out sim:smlm stacks (drivers.sim.smlm.simulate_stack at its defaults: 64 x 64 pixels of
100 nm, PSF sigma 99 nm, 1,000 photons; `frames` frames each; simulator seeds TEST_SEED + j,
validation VAL_SEED + j; the recipes train on others) at a sparse (0.5 / um^2) and a dense
(3 / um^2) density of emitters per frame, each turned into one super-resolved image by

- sparcom-100   SPARCOM, 100 FISTA iterations (the seed's Fig. 8(b)), engines.load("sparcom")
- sparcom-400   SPARCOM at the anchors' reference 400 iterations
- lsparcom      the trained unfolding (`lsparcom` artifact, 10 folds; the seed's Fig. 8(c))
- deep-storm    the black-box baseline, frame by frame, its outputs summed (`deep-storm` artifact)
- smlm-fit      the model-based localization baseline, frame by frame, localizations accumulated

all through the Engine contract (windows (N, T, 1, H, W) -> (N, 1, 1, uH, uW); the per-frame
engines take windows of one frame), on torch (numpy for smlm-fit), one thread. A method whose
engine is not available here is skipped with a note (the trained artifacts may be missing).

Figures per method and density (engines.imaging.smlm_metrics):
- image correlation and NMSE of the SR image against the simulator's filament image (8x grid,
  25 nm blur), mean and spread over the test stacks;
- localizations of the SR image (its local maxima over 2 x 50 nm, above a fraction of its
  maximum chosen on the validation stacks for the best Jaccard) against the stack's truth (the
  distinct emitters ON in it), matched within 250 nm: Jaccard, precision, recall, RMSE,
  efficiency, pooled over the test stacks;
- time per stack: CPU seconds (time.process_time) and wall seconds of the engine calls on the
  whole stack, median over the test stacks, all measured in this run on this machine; lsparcom
  also on ONNX Runtime (`lsparcom-ort`, same graph as the torch module).
The diffraction-limited references: the mean frame (upsampled) and the correlation data
(the variance image on the x4 grid) scored the same way.

Writes fig8.csv (a row per method and density), fig8.json (every figure, the validation curves,
the setup, the machine) and fig8.png (per density: mean frame, variance, each method's SR image,
the true filaments; a dense and a sparse row, like the seed's Fig. 8).
Full run: 2 test and 1 validation stacks per density of 350 frames; `quick` (tests): 16 x 16
stacks of 20 frames, SPARCOM 10/40 iterations, per-frame baselines on the first 4 frames only.
"""

from __future__ import annotations

import csv
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engines
from drivers.sim.smlm import SmlmParams, SmlmStack, simulate_stack
from engines.errors import EngineError
from engines.imaging.smlm_metrics import (
    image_correlation,
    image_nmse,
    localize_image,
    match_nm,
    pooled,
    scores,
    stack_truth,
)
from engines.imaging.sparcom import correlation_input
from engines.load import load_artifact

TEST_SEED, VAL_SEED = 5100, 5200
DENSITIES = {"sparse": 0.5, "dense": 3.0}  # emitters per um^2 per frame (the recipes' held-out ones)
FRACTIONS = tuple(float(f) for f in np.geomspace(0.001, 0.5, 16))  # localization threshold / image max
PEAK_RADIUS_NM = 50.0  # maxima closer than about twice this are one
TRUTH_FINE_NM = 12.5  # the simulator's filament image is on the 8x grid
CHUNK = 25  # frames per call of a per-frame engine


@dataclass(frozen=True)
class Size:
    field: int
    frames: int
    test: int  # stacks per density
    val: int
    sparcom_iterations: tuple[int, int]
    per_frame_frames: int | None  # frames a per-frame baseline sees (None: all)


FULL = Size(field=64, frames=350, test=2, val=1, sparcom_iterations=(100, 400), per_frame_frames=None)
QUICK = Size(field=16, frames=20, test=1, val=1, sparcom_iterations=(10, 40), per_frame_frames=4)


@dataclass
class Method:
    """An engine and how it makes one SR image of a stack (frames (T, H, W) float32 ADU)."""

    name: str
    engine: Any
    per_frame: bool
    frames: int | None = None  # per-frame engines: how many frames of the stack they see

    def image(self, frames: np.ndarray) -> np.ndarray:
        """The SR image (uH, uW) of one stack."""
        if not self.per_frame:
            return self.engine(frames[None, :, None])[0, 0, 0]
        use = frames[: self.frames] if self.frames else frames
        total = None
        for a in range(0, len(use), CHUNK):
            out = self.engine(use[a:a + CHUNK, None, None]).sum(axis=(0, 1, 2))
            total = out if total is None else total + out
        return total


def stacks(seed: int, density: float, n: int, size: Size) -> list[SmlmStack]:
    p = SmlmParams(size=size.field, density=density)
    return [simulate_stack(p, size.frames, seed + j) for j in range(n)]


def load_engine(name_or_path: str, **kw):
    """engines.load(name, **kw), or the artifact in a folder (its `backend` only)."""
    if Path(name_or_path).is_dir():
        return load_artifact(name_or_path, kw.get("backend", "auto"))
    return engines.load(name_or_path, **kw)


def load_methods(size: Size, lsparcom: str, deep_storm: str, log: Callable[[str], None]
                 ) -> tuple[dict[str, Method], dict[str, str]]:
    """The methods available here, and a note for each one skipped."""
    methods: dict[str, Method] = {}
    skipped: dict[str, str] = {}
    for n in size.sparcom_iterations:
        methods[f"sparcom-{n}"] = Method(f"sparcom-{n}", engines.load("sparcom", iterations=n,
                                                                      window=size.frames), False)

    def try_load(name: str, key: str, per_frame: bool, **kw) -> None:
        try:
            engine = load_engine(name, **kw)
        except EngineError as e:
            skipped[key] = f"{name} not available here: {e}"
            log(f"fig8: skipping {key}: {skipped[key]}")
            return
        if not per_frame and engine.info.window > size.frames:
            skipped[key] = f"{name} takes stacks of {engine.info.window} frames, these have {size.frames}"
            log(f"fig8: skipping {key}: {skipped[key]}")
            return
        methods[key] = Method(key, engine, per_frame, size.per_frame_frames if per_frame else None)

    try_load(lsparcom, "lsparcom", False, backend="torch")
    if "lsparcom" in methods:
        try_load(lsparcom, "lsparcom-ort", False, backend="onnxruntime")
    try_load(deep_storm, "deep-storm", True, backend="torch")
    try_load("smlm-fit", "smlm-fit", True)
    return methods, skipped


def timed_image(method: Method, frames: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(SR image, CPU s, wall s) of one stack."""
    cpu, wall = time.process_time(), time.perf_counter()
    image = method.image(frames)
    return image, time.process_time() - cpu, time.perf_counter() - wall


def fine_nm_of(image: np.ndarray, stack: SmlmStack) -> float:
    return stack.params.pixel_nm * stack.params.size / image.shape[-1]


def localization_matching(image: np.ndarray, stack: SmlmStack, fraction: float, truth: np.ndarray):
    fine_nm = fine_nm_of(image, stack)
    radius = max(1, round(PEAK_RADIUS_NM / fine_nm))
    return match_nm(localize_image(image, fine_nm, fraction * float(image.max()), radius), truth)


def choose_fraction(images: list[np.ndarray], held: list[SmlmStack]) -> tuple[float, dict[str, float]]:
    """The FRACTIONS entry with the best pooled Jaccard on the validation stacks, and the curve."""
    truths = [stack_truth(s.positions) for s in held]
    triples = list(zip(images, held, truths, strict=True))
    curve = {f: pooled(localization_matching(im, s, f, t) for im, s, t in triples).jaccard for f in FRACTIONS}
    return max(curve, key=curve.get), {f"{f:.4g}": round(j, 4) for f, j in curve.items()}


def figures(images: list[np.ndarray], held: list[SmlmStack], fraction: float) -> dict[str, Any]:
    """Image figures (mean and std over the stacks; per stack too) and pooled localization figures."""
    corr = [image_correlation(im, s.filament, TRUTH_FINE_NM) for im, s in zip(images, held, strict=True)]
    nmse = [image_nmse(im, s.filament, TRUTH_FINE_NM) for im, s in zip(images, held, strict=True)]
    per_stack = [localization_matching(im, s, fraction, stack_truth(s.positions))
                 for im, s in zip(images, held, strict=True)]
    return {"image_correlation": round(float(np.mean(corr)), 4),
            "image_correlation_std": round(float(np.std(corr)), 4),
            "image_correlation_per_stack": [round(c, 4) for c in corr],
            "image_nmse": round(float(np.mean(nmse)), 4), "image_nmse_std": round(float(np.std(nmse)), 4),
            "jaccard_per_stack": [round(m.jaccard, 4) for m in per_stack],
            **scores(pooled(per_stack)).as_dict(), "threshold_fraction": fraction}


def reference_images(stack: SmlmStack) -> dict[str, np.ndarray]:
    """The diffraction-limited references: the mean frame (upsampled x4, nearest) and the variance data g."""
    frames = torch.from_numpy(stack.frames.astype(np.float32))
    mean = frames.mean(0).numpy()
    return {"mean frame": np.kron(mean - np.median(mean), np.ones((4, 4))),
            "variance (input)": correlation_input(frames[None, :, None], 4)[0].numpy()}


def _plot(path: Path, rows: dict[str, dict[str, np.ndarray]], scores_: dict[str, dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols), 2.9 * len(rows)), squeeze=False)
    for i, (density, panels) in enumerate(rows.items()):
        for j, (title, image) in enumerate(panels.items()):
            ax = axes[i, j]
            im = np.clip(image, 0, None)
            ax.imshow(np.sqrt(im / max(float(im.max()), 1e-12)), cmap="hot")
            c = scores_.get(density, {}).get(title)
            ax.set_title(f"{title}" + (f"\ncorr {c:.2f}" if c is not None else ""), fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(density, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_fig8(out: str | Path, quick: bool = False, lsparcom: str = "lsparcom", deep_storm: str = "deep-storm",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the experiment into folder `out` (created); returns what fig8.json holds."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = QUICK if quick else FULL
    torch.set_num_threads(1)
    methods, skipped = load_methods(size, lsparcom, deep_storm, log)
    rows: list[dict[str, Any]] = []
    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    panels: dict[str, dict[str, np.ndarray]] = {}
    panel_scores: dict[str, dict[str, float]] = {}
    for label, density in DENSITIES.items():
        test = stacks(TEST_SEED, density, size.test, size)
        val = stacks(VAL_SEED, density, size.val, size)
        panels[label] = reference_images(test[0])
        panel_scores[label] = {k: image_correlation(v, test[0].filament, TRUTH_FINE_NM)
                               for k, v in panels[label].items()}
        for name, method in methods.items():
            fraction, curve = choose_fraction([method.image(s.frames) for s in val], val)
            timed = [timed_image(method, s.frames) for s in test]  # the stacks one after the other
            images = [t[0] for t in timed]
            f = figures(images, test, fraction)
            f.update(cpu_s_per_stack=round(float(np.median([t[1] for t in timed])), 4),
                     wall_s_per_stack=round(float(np.median([t[2] for t in timed])), 4),
                     validation_jaccard=curve, frames_seen=method.frames or size.frames)
            results[name][label] = f
            panels[label][name] = images[0]
            panel_scores[label][name] = f["image_correlation_per_stack"][0]
            rows.append({"method": name, "density": label, **{k: v for k, v in f.items()
                                                             if not isinstance(v, (list, dict))}})
            log(f"fig8 {label} {name}: corr {f['image_correlation']:.3f}, Jaccard {f['jaccard']:.3f}, "
                f"{f['cpu_s_per_stack']:.3f} CPU s/stack")
        panels[label]["truth (filaments)"] = test[0].filament
        for ref, image in reference_images(test[0]).items():
            corr = image_correlation(image, test[0].filament, TRUTH_FINE_NM)
            rows.append({"method": ref, "density": label, "image_correlation": round(corr, 4)})
    for name, note in skipped.items():
        rows.append({"method": name, "status": note})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "fig8.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, keys)
        writer.writeheader()
        writer.writerows(rows)
    ratios = speed_ratios(results)
    result = {
        "experiment": "fig8", "quick": quick, "results": results, "skipped": skipped, "ratios": ratios,
        "setup": {"field_px": size.field, "pixel_nm": 100.0, "frames_per_stack": size.frames,
                  "densities_per_um2": DENSITIES, "test_stacks_per_density": size.test,
                  "val_stacks_per_density": size.val, "test_seed": TEST_SEED, "val_seed": VAL_SEED,
                  "threshold_fractions": list(FRACTIONS), "peak_radius_nm": PEAK_RADIUS_NM,
                  "truth": "the distinct emitters ON in the stack (localizations); the filament image "
                           "(images)",
                  "timing": "engine calls on one whole stack, one torch thread; medians over the test stacks",
                  "artifacts": {k: getattr(m.engine, "artifact_sha256", None) for k, m in methods.items()}},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "fig8.json").write_text(json.dumps(result, indent=2, allow_nan=False, default=_nan_free) + "\n",
                                   encoding="utf-8")
    _plot(out / "fig8.png", panels, panel_scores)
    return result


def _nan_free(obj: Any) -> Any:
    raise TypeError(f"{type(obj).__name__} is not JSON-serializable")


def speed_ratios(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Per-stack CPU time of SPARCOM-100 over LSPARCOM's (torch and ONNX Runtime), and ORT over torch,
    medians over both densities."""
    def cpu(name: str) -> float | None:
        r = results.get(name)
        return float(np.median([v["cpu_s_per_stack"] for v in r.values()])) if r else None

    sp, ls, ort = cpu("sparcom-100"), cpu("lsparcom"), cpu("lsparcom-ort")

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b and not math.isnan(b) else None

    return {"sparcom100_over_lsparcom_torch": ratio(sp, ls), "sparcom100_over_lsparcom_ort": ratio(sp, ort),
            "lsparcom_ort_over_torch": ratio(ort, ls)}
