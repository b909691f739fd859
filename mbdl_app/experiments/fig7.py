"""Reproduce seed Fig. 7 (ULM super-resolution by a convolutional LISTA): `mbdl reproduce fig7`.

On a held-out sim:ceus field (simulator seed 21; the recipe trains on 11-13), every frame's
separated bubbles as a perfect clutter filter leaves them (data - tissue = bubbles + the
PSF-filtered noise) are localized on the 8x finer grid by

- ulm-lista   the trained convolutional LISTA (`ulm-lista` artifact, engines/imaging/ulm.py),
- ulm-fista   FISTA on the PSF operator (the model-based baseline, same sparse model),
- coarse      peaks of the envelope on the original grid (diffraction-limited localization),

and accumulated into super-resolved maps, shown beside the true vessels and the
diffraction-limited accumulation (the sum of the envelopes, upsampled bilinearly).

Each method's localizer threshold is a fraction of the 99.9th percentile of its smoothed
intensity, the fraction chosen on validation frames (seed 22) for the best Jaccard index.
Resolution metrics on the test frames (tolerance 0.5 coarse pixel = 60 um):
- localization: Jaccard index TP / (TP + FP + FN), RMSE of the matched pairs (um), precision,
  recall (Hungarian matching per frame, engines.imaging.ulm.match);
- map: the fraction of the map's intensity within the tolerance of a true lumen (vessel_map
  dilated by 0.5 pixel): 1 for a perfect map, low for a diffraction-limited blur.
CPU time per frame: time.process_time of the solver on the whole set, torch on one thread.

Writes fig7.csv (one row per method), fig7.json (every figure, the validation curves, the
setup) and fig7.png (true vessels, diffraction-limited accumulation, FISTA and LISTA maps).
One more row runs the live chain on the data itself (tissue clutter included): CORONA
(`corona-ceus`, blocks of 20 frames) -> ulm-lista (trained on clean bubbles), its threshold
chosen on CORONA's output for the validation frames; its `separator_cpu_ms_per_frame` is
CORONA's share. `chained` (an artifact folder, e.g. from `mbdl train ulm-chained`: ulm-lista
fine-tuned on CORONA's output) adds the row CORONA -> that localizer on the same frames.
Full run: a 32 x 32 field (3.84 mm), 120 test and 20 validation frames, FISTA 100 iterations;
`quick` (tests): 24 x 24, 4 + 4 frames, FISTA 10 iterations.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

import engines
from drivers.sim.ceus import CeusParams, CeusSimulator
from engines.errors import EngineError
from engines.imaging.clutter import centre_frames, separated_sliding
from engines.imaging.ulm import (
    FACTOR,
    Localizer,
    Matching,
    SuperResolution,
    envelope,
    localization_positions,
    match,
    true_positions,
)
from engines.load import load_artifact

TEST_SEED, VAL_SEED = 21, 22
CORONA_WINDOW = 20
TOLERANCE = 0.5  # coarse pixels
FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # of the 99.9th percentile of G * s
PIXEL_UM = 120.0


@dataclass(frozen=True)
class Size:
    field: int
    test_frames: int
    val_frames: int
    fista_iterations: int


FULL = Size(field=32, test_frames=120, val_frames=20, fista_iterations=100)
QUICK = Size(field=24, test_frames=4, val_frames=4, fista_iterations=10)


@dataclass
class Frames:
    """I/Q bubble frames S (n, 1, 2, h, w), the data D (n, 2, h, w) they were separated from, true
    positions per frame, and the simulator (vessels)."""

    S: torch.Tensor
    D: torch.Tensor
    positions: list[np.ndarray]
    sim: CeusSimulator


def frames(seed: int, n: int, field: int) -> Frames:
    sim = CeusSimulator(CeusParams(height=field, width=field, seed=seed))
    f = sim.frames(n)
    S = torch.from_numpy(f["data"] - f["tissue"])[:, None]
    return Frames(S, torch.from_numpy(f["data"]), [true_positions(p, (field, field)) for p in f["positions"]],
                  sim)


def separated(separator: torch.nn.Module, D: torch.Tensor, window: int = 20) -> torch.Tensor:
    """The bubbles (n, 1, 2, h, w) a clutter separator finds in frames D (n, 2, h, w), run as a live
    session does: consecutive blocks of `window` frames (the last block ends at frame n)."""
    n = len(D)
    starts = list(range(0, n - window + 1, window))
    if starts[-1] + window < n:
        starts.append(n - window)
    out = torch.empty(n, 1, *D.shape[1:])
    with torch.no_grad():
        for a in starts:
            out[a:a + window, 0] = separator(D[a:a + window][None])[0]
    return out


def _load_engine(name_or_path: str):
    """The engine of an artifact (name or folder) on the auto backend; None if there is none."""
    try:
        return load_artifact(name_or_path) if Path(name_or_path).is_dir() else engines.load(name_or_path)
    except EngineError:
        return None


def load_module(name_or_path: str) -> torch.nn.Module | None:
    """The trained torch module of an artifact, by name or folder; None if there is none."""
    try:
        engine = (load_artifact(name_or_path, backend="torch") if Path(name_or_path).is_dir()
                  else engines.load(name_or_path, backend="torch"))
    except EngineError:
        return None
    return getattr(engine, "module", None)


class CoarsePeaks(torch.nn.Module):
    """Diffraction-limited localization: the envelope on the original grid, coarse pixel i put at
    fine pixel 8 i + 4 (1/16 pixel from its centre), so that the same localizer finds its peaks
    (over 3 x 3 coarse pixels: `radius` = 8 fine pixels)."""

    radius = FACTOR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = envelope(x)
        fine = torch.zeros(e.shape[0], e.shape[1] * FACTOR, e.shape[2] * FACTOR)
        fine[:, FACTOR // 2::FACTOR, FACTOR // 2::FACTOR] = e  # fine index 8 i + 4 ~ coarse i
        return fine


def intensities(method: Any, S: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(the smoothed fine-grid intensity G * s of every frame, CPU seconds per frame)."""
    start = time.process_time()
    with torch.no_grad():
        s = method.intensity(S) if isinstance(method, SuperResolution) else method(S)
    seconds = (time.process_time() - start) / len(S)
    return Localizer().intensity(s), seconds


def localize(g: torch.Tensor, threshold: float, radius: int) -> np.ndarray:
    """Localization images of smoothed intensities g: local maxima over (2 radius + 1)^2 above threshold."""
    peak = F.max_pool2d(g[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
    return ((g >= peak) & (g > threshold)).numpy()


def score(loc: np.ndarray, positions: list[np.ndarray]) -> Matching:
    total = Matching(0, 0, 0, np.zeros(0))
    for image, p in zip(loc, positions, strict=True):
        total = total + match(localization_positions(image), p, TOLERANCE)
    return total


def in_vessel_fraction(image: np.ndarray, vessels: np.ndarray) -> float:
    """The fraction of a fine-grid map's intensity within TOLERANCE coarse pixels of a true lumen."""
    r = int(round(TOLERANCE * FACTOR))
    disk = np.hypot(*np.mgrid[-r:r + 1, -r:r + 1]) <= r
    near = ndimage.binary_dilation(vessels > 0, structure=disk)
    total = float(image.sum())
    return float(image[near].sum()) / total if total > 0 else float("nan")


def _plot(path: Path, panels: dict[str, np.ndarray], extent_mm: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.2))
    for ax, (title, image) in zip(axes, panels.items(), strict=True):
        ax.imshow(np.sqrt(image / max(float(image.max()), 1e-12)), cmap="hot",
                  extent=(0, extent_mm, extent_mm, 0))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("lateral [mm]")
    axes[0].set_ylabel("axial [mm]")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_fig7(out: str | Path, quick: bool = False, lista: str = "ulm-lista", log=print,
             corona: str = "corona-ceus", chained: str | None = None,
             separator: str | None = None, sliding: bool = False,
             mc: str | None = "corona-mc") -> dict[str, Any]:
    """Run the experiment into folder `out` (created); returns what fig7.json holds. `separator`
    (a clutter-suppression artifact folder, e.g. corona-ulm from `mbdl train corona-ulm`) runs in
    front of the `chained` localizer instead of `corona` (a jointly trained pair). `sliding` adds
    the chain with `corona` on a sliding window (hop 1) keeping each window's centre frame, its
    S and its residual D - L into ulm-lista (`separated_sliding`): the frames after the last test
    and validation frame that the centred windows need are simulated too (the same streams)."""
    if separator and not chained:
        raise ValueError(f"fig7 --separator {separator}: needs --chained, the ULM artifact trained with it")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = QUICK if quick else FULL
    torch.set_num_threads(1)
    test, val = frames(TEST_SEED, size.test_frames, size.field), frames(VAL_SEED, size.val_frames, size.field)
    methods: dict[str, Any] = {
        "ulm-fista": SuperResolution(fista={"n_iter": size.fista_iterations}),
        "coarse": CoarsePeaks(),
    }
    trained = load_module(lista)
    if trained is not None:
        methods = {"ulm-lista": trained, **methods}
    vessels = test.sim.vessel_map(FACTOR)
    rows, curves, maps = [], {}, {}

    def evaluate(name: str, method: Any, val_S: torch.Tensor, test_S: torch.Tensor, **extra) -> None:
        radius = getattr(method, "radius", Localizer().radius)
        g_val, _ = intensities(method, val_S)
        scale = float(torch.quantile(g_val.flatten()[::7], 0.999)) or 1.0
        curve = {f: score(localize(g_val, f * scale, radius), val.positions).jaccard for f in FRACTIONS}
        best = max(curve, key=curve.get)
        g, seconds = intensities(method, test_S)
        loc = localize(g, best * scale, radius)
        m = score(loc, test.positions)
        maps[name] = loc.sum(0).astype(np.float32)
        curves[name] = {str(f): round(j, 4) for f, j in curve.items()}
        rows.append({
            "method": name, "threshold_fraction": best, "threshold": round(best * scale, 6),
            "jaccard": round(m.jaccard, 4), "rmse_um": round(m.rmse * PIXEL_UM, 2) if m.tp else None,
            "precision": round(m.tp / max(m.tp + m.fp, 1), 4), "recall": round(m.tp / max(m.tp + m.fn, 1), 4),
            "tp": m.tp, "fp": m.fp, "fn": m.fn,
            "map_in_vessel_fraction": round(in_vessel_fraction(maps[name], vessels), 4),
            "cpu_ms_per_frame": round(1e3 * seconds, 2), **extra,
        })
        log(f"fig7 {name}: Jaccard {m.jaccard:.3f}, RMSE {m.rmse * PIXEL_UM:.1f} um, "
            f"{1e3 * seconds:.1f} ms/frame")

    for name, method in methods.items():
        evaluate(name, method, val.S, test.S)
    localizers = {"ulm-lista": trained, **({Path(chained).name: load_module(chained)} if chained else {})}
    localizers = {k: v for k, v in localizers.items() if v is not None}
    corona_module = load_module(corona) if localizers else None
    if corona_module is not None and min(len(val.D), len(test.D)) >= CORONA_WINDOW:
        # the chained live pipeline: CORONA's bubbles (blocks of 20 frames of the data, tissue
        # included) into ulm-lista (trained on clean bubbles) and the `chained` localizer (one
        # fine-tuned on CORONA's output), each threshold chosen on CORONA's validation output
        start = time.process_time()
        test_S = separated(corona_module, test.D)
        seconds = (time.process_time() - start) / len(test.D)
        val_S = separated(corona_module, val.D)
        own = load_module(separator) if separator and chained else None
        if separator and chained and own is None:
            raise ValueError(f"fig7 --separator {separator}: not a clutter-suppression artifact folder")
        for name, localizer in localizers.items():
            if own is not None and name != "ulm-lista":  # the jointly trained pair: its own separator
                start = time.process_time()
                own_test = separated(own, test.D)
                own_s = (time.process_time() - start) / len(test.D)
                evaluate(f"{Path(separator).name} -> {name}", localizer, separated(own, val.D), own_test,
                         input=f"{Path(separator).name}'s bubbles from the data",
                         separator_cpu_ms_per_frame=round(1e3 * own_s, 2))
                continue
            evaluate(f"{corona} -> {name}", localizer, val_S, test_S,
                     input=f"{corona}'s bubbles from the data",
                     separator_cpu_ms_per_frame=round(1e3 * seconds, 2))
        if sliding and trained is not None:
            half = CORONA_WINDOW // 2
            test_ext = frames(TEST_SEED, size.test_frames + half, size.field).D
            val_ext = frames(VAL_SEED, size.val_frames + half, size.field).D
            for residual, what in ((False, "S"), (True, "D - L")):
                start = time.process_time()
                test_in = separated_sliding(corona_module, test_ext, len(test.D), residual=residual)
                slide_s = (time.process_time() - start) / len(test.D)
                val_in = separated_sliding(corona_module, val_ext, len(val.D), residual=residual)
                for name, localizer in localizers.items():  # ulm-lista, and --chained if given
                    evaluate(f"{corona} (sliding, centre, {what}) -> {name}", localizer, val_in, test_in,
                             input=(f"{corona} on a sliding window of {CORONA_WINDOW} frames (hop 1), each "
                                    f"window's centre frame ({half} frames late), its {what}"),
                             separator_cpu_ms_per_frame=round(1e3 * slide_s, 2))
    mc_engine = _load_engine(mc) if mc and trained is not None else None
    if mc_engine is not None:
        # the motion-compensated chain (issue 15): corona-mc, each frame the centre of its window
        lag = mc_engine.info.window // 2
        inputs = {}
        start = time.process_time()
        for key, seed, n in (("test", TEST_SEED, size.test_frames), ("val", VAL_SEED, size.val_frames)):
            D = frames(seed, max(n + lag, mc_engine.info.window), size.field).D.numpy()
            inputs[key] = torch.from_numpy(centre_frames(mc_engine, D, n, lag))[:, None]
            if key == "test":
                mc_s = (time.process_time() - start) / n
        evaluate(f"{Path(mc).name} (motion-compensated, centre, D - L) -> ulm-lista", trained, inputs["val"],
                 inputs["test"], input=(f"{Path(mc).name}: every frame of a {mc_engine.info.window}-frame "
                                        f"window registered to its centre, CORONA's D - L, hop 1, lag {lag}"),
                 separator_cpu_ms_per_frame=round(1e3 * mc_s, 2),
                 separator_backend=mc_engine.info.backend)
    with torch.no_grad():
        e = envelope(test.S).sum(0)[None, None]
    diffraction = F.interpolate(e, scale_factor=FACTOR, mode="bilinear", align_corners=False)[0, 0].numpy()
    rows.append({"method": "diffraction-limited accumulation",
                 "map_in_vessel_fraction": round(in_vessel_fraction(diffraction, vessels), 4)})
    if trained is None:
        rows.insert(0, {"method": "ulm-lista", "status": f"not trained ({lista} not found)"})
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "fig7.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, keys)
        writer.writeheader()
        writer.writerows(rows)
    truth_points = np.concatenate(test.positions) if test.positions else np.zeros((0, 2))
    result = {
        "experiment": "fig7", "quick": quick, "results": rows, "validation_jaccard": curves,
        "setup": {"field_px": size.field, "pixel_mm": 0.12, "factor": FACTOR, "test_seed": TEST_SEED,
                  "val_seed": VAL_SEED, "test_frames": size.test_frames, "val_frames": size.val_frames,
                  "true_bubbles_in_test": int(len(truth_points)), "fista_iterations": size.fista_iterations,
                  "tolerance_px": TOLERANCE, "threshold_fractions": list(FRACTIONS),
                  "input": "data - tissue (bubbles + PSF-filtered noise) of each frame; the "
                           f"'{corona} -> ...' rows: {corona}'s bubbles from the data (blocks of "
                           f"{CORONA_WINDOW} frames)",
                  "chained_artifact": chained if chained and Path(chained).name in localizers else None,
                  "lista_artifact": lista if trained is not None else None,
                  "fine_grid": "fine pixel j at coarse coordinate (j + 0.5) / 8 - 0.5"},
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "processor": platform.processor() or platform.machine()},
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "fig7.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    panels = {"true vessels": vessels, "diffraction-limited accumulation": diffraction}
    jaccard = {r["method"]: r["jaccard"] for r in rows if "jaccard" in r}
    shown = {k: v for k, v in maps.items() if k != "coarse" and "(sliding" not in k}  # readable: <= 7 panels
    short = {k: k.replace(" (motion-compensated, centre, D - L)", "") for k in shown}
    panels.update({f"{short[k]} map (Jaccard {jaccard[k]:.2f})": v for k, v in shown.items()})
    _plot(out / "fig7.png", panels, size.field * 0.12)
    return result
