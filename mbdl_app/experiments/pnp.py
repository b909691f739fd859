"""Plug-and-play priors (seed Example 20): `mbdl reproduce pnp`.

Three restorations, every method with the same ADMM / HQS step (engines/imaging/pnp.py); only the
prior step differs:

1. Denoising the held-out image of the dncnn recipe (skimage.data.camera, never trained on) at
   sigma = 25/255 (noise seeded): the noisy input, TV-ADMM, PnP-ADMM, PnP-HQS, the denoiser alone
   (h(x; sigma), one pass) and BM3D (the `bm3d` package, when installed; else a one-line note).
2. Deblurring a microscopy frame: the filaments of a sim:smlm simulation (drivers.sim.smlm, seed
   SMLM_SEED) on a 50 nm grid, blurred by the microscope's Gaussian PSF (sigma = 0.21 lambda / NA,
   about 2 pixels of 50 nm; circular) plus noise of std DEBLUR_SIGMA.
3. Deblurring an ultrasound frame: the envelope |I + jQ| of a sim:ceus frame's tissue + bubbles
   (noise-free truth; drivers.sim.ceus, seed CEUS_SEED) scaled to [0, 1], blurred by a Gaussian of
   CEUS_BLUR pixels plus noise of std DEBLUR_SIGMA.

Scores: PSNR (peak 1) against the clean image; CPU seconds of each method (time.process_time, one
torch thread). Targets (pnp.json): PnP (the better of ADMM / HQS) >= TV-ADMM + 1 dB on the held-out
image, and within 1 dB of BM3D. Writes pnp.csv, pnp.json and pnp.png (the images). `quick`: a
64 x 64 crop of the held-out image, 32 x 32 frames, few iterations.
"""

from __future__ import annotations

import csv
import json
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from drivers.sim.ceus import CeusParams, CeusSimulator
from drivers.sim.smlm import SmlmParams, SmlmSimulator
from engines.imaging.pnp import PNP_ALPHA0, PNP_ITER, TV_ITER, blur, gaussian_psf, pnp_admm, pnp_hqs, tv_admm
from mbdl_app.training.recipes.dncnn import HELD_OUT, denoise_image, noisy, psnr
from mbdl_app.training.shipped_data import skimage_gray

SIGMA = 25 / 255
DEBLUR_SIGMA = 0.02
CEUS_BLUR = 1.5  # pixels
SMLM_SEED, CEUS_SEED, NOISE_SEED = 5, 5, 2025
FINE = 2  # the microscopy scene's grid: the camera pixel / FINE


def microscopy_scene(size: int) -> tuple[np.ndarray, float]:
    """(the filaments on a size x size grid of pixel_nm / FINE, on [0, 1]; the PSF sigma in those pixels)."""
    p = SmlmParams(size=size // FINE, n_filaments=8)
    return SmlmSimulator(p, seed=SMLM_SEED).filament_image(FINE), p.psf_sigma_nm / (p.pixel_nm / FINE)


def ultrasound_scene(size: int) -> np.ndarray:
    """The envelope of a sim:ceus frame's tissue + bubbles (size x size), divided by its maximum."""
    frame = CeusSimulator(CeusParams(height=size, width=size), seed=CEUS_SEED).step()
    clean = frame["tissue"] + frame["bubbles"]
    env = np.hypot(clean[0], clean[1])
    return (env / env.max()).astype(np.float32)


def _bm3d(z: np.ndarray, sigma: float) -> tuple[np.ndarray | None, str]:
    try:
        import bm3d
    except ImportError:
        return None, "BM3D skipped: the bm3d package is not installed (pip install 'mbdl-studio[priors]')"
    return np.asarray(bm3d.bm3d(z, sigma_psd=sigma), np.float32), f"bm3d {version('bm3d')}"


def _timed(fn) -> tuple[np.ndarray, float]:
    t = time.process_time()
    out = fn()
    return np.asarray(out, np.float32), time.process_time() - t


def restore_all(clean: np.ndarray, psf_sigma: float, sigma: float, denoiser: torch.nn.Module, n_iter: int,
                tv_iter: int, seed: int) -> dict[str, tuple[np.ndarray, float]]:
    """{method: (estimate, CPU s)} for x = k * clean + w: TV-ADMM, PnP-ADMM, PnP-HQS (and, with no blur, the
    denoiser alone); "observed" is x."""
    psf = gaussian_psf(clean.shape, psf_sigma)
    x = blur(torch.from_numpy(clean.astype(np.float64))[None], psf)[0].numpy().astype(np.float32)
    x = noisy(x, sigma, seed)
    xt = torch.from_numpy(x)[None]
    out: dict[str, tuple[np.ndarray, float]] = {"observed": (x, 0.0)}
    with torch.no_grad():
        out["tv-admm"] = _timed(lambda: tv_admm(sigma, n_iter=tv_iter)(xt, psf)[0])
        out["pnp-admm"] = _timed(lambda: pnp_admm(denoiser, sigma, n_iter, PNP_ALPHA0)(xt, psf)[0])
        out["pnp-hqs"] = _timed(lambda: pnp_hqs(denoiser, sigma, n_iter, PNP_ALPHA0)(xt, psf)[0])
    if psf_sigma == 0:
        out["dncnn-alone"] = _timed(lambda: denoise_image(denoiser, x, sigma))
    return out


def run_pnp(out: Path, quick: bool = False, artifact: str | Path | None = None,
            bm3d: bool = True) -> dict[str, Any]:
    """Run the experiment into folder `out` (created); returns what pnp.json holds. `artifact`: the denoiser
    folder (default: the shipped exported_models/dncnn); `bm3d`: run the BM3D baseline when installed."""
    import exported_models
    from engines.artifacts import read_artifact
    from engines.imaging.dncnn import DnCNN

    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    art = read_artifact(Path(artifact) if artifact else exported_models.ROOT / "dncnn")
    denoiser = art.build_module(lambda: DnCNN(**art.card["architecture"]["kwargs"]), "DnCNN").eval()
    n_iter, tv_iter = (4, 8) if quick else (PNP_ITER, TV_ITER)
    size = 32 if quick else 128
    start = time.time()

    image = skimage_gray(HELD_OUT)
    if quick:
        r, c = (image.shape[0] - 64) // 2, (image.shape[1] - 64) // 2
        image = image[r:r + 64, c:c + 64]
    scene, psf_px = microscopy_scene(size)
    tasks = {"denoise-" + HELD_OUT: (image, 0.0, SIGMA),
             "deblur-microscopy": (scene, psf_px, DEBLUR_SIGMA),
             "deblur-ultrasound": (ultrasound_scene(size), CEUS_BLUR, DEBLUR_SIGMA)}
    results: dict[str, dict[str, tuple[np.ndarray, float]]] = {}
    note = "BM3D not run (--no-bm3d)"
    for i, (task, (clean, psf_sigma, sigma)) in enumerate(tasks.items()):
        results[task] = restore_all(clean, psf_sigma, sigma, denoiser, n_iter, tv_iter, NOISE_SEED + i)
        if psf_sigma == 0 and bm3d:
            z = results[task]["observed"][0]
            t = time.process_time()
            est, note = _bm3d(z, sigma)
            if est is not None:
                results[task]["bm3d"] = (est, time.process_time() - t)
    print(note)

    rows = [{"task": task, "method": m, "psnr_db": round(psnr(est, tasks[task][0]), 3),
             "cpu_s": round(cpu, 2)} for task, r in results.items() for m, (est, cpu) in r.items()]
    with open(out / "pnp.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = {task: {r["method"]: r["psnr_db"] for r in rows if r["task"] == task} for task in tasks}
    held = table["denoise-" + HELD_OUT]
    best_pnp = max(held["pnp-admm"], held["pnp-hqs"])
    gain = best_pnp - held["tv-admm"]
    targets: dict[str, Any] = {"pnp_over_tv_db": {"value": round(gain, 3), "target": 1.0, "met": gain >= 1.0}}
    if "bm3d" in held:
        targets["pnp_minus_bm3d_db"] = {"value": round(best_pnp - held["bm3d"], 3), "target": -1.0,
                                        "met": best_pnp - held["bm3d"] >= -1.0}
    result = {
        "experiment": "pnp", "quick": quick, "psnr_db": table, "targets": targets, "bm3d": note,
        "cpu_s": {task: {r["method"]: r["cpu_s"] for r in rows if r["task"] == task} for task in tasks},
        "setup": {"held_out": f"skimage.data.{HELD_OUT}() {image.shape[0]} x {image.shape[1]}, sigma 25/255",
                  "deblur_sigma": DEBLUR_SIGMA, "microscopy_psf_px": round(psf_px, 3),
                  "ceus_blur_px": CEUS_BLUR, "frame_size": size, "pnp_iterations": n_iter,
                  "pnp_alpha0": PNP_ALPHA0, "tv_iterations": tv_iter,
                  "denoiser": {"artifact": art.card.get("name"), "sha256": art.sha256,
                               "kwargs": art.card["architecture"]["kwargs"]}},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 1},
        "wall_time_s": round(time.time() - start, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "pnp.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    _plot(out / "pnp.png", results, tasks)
    return result


def _plot(path: Path, results: dict[str, dict[str, tuple[np.ndarray, float]]], tasks: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in results.values()) + 1
    fig, axes = plt.subplots(len(results), cols, figsize=(2.2 * cols, 2.4 * len(results)), dpi=110,
                             squeeze=False)
    for row, (task, r) in zip(axes, results.items(), strict=True):
        clean = tasks[task][0]
        panels = [("clean", clean), *((m, est) for m, (est, _) in r.items())]
        for ax in row:
            ax.axis("off")
        for ax, (name, im) in zip(row, panels, strict=False):
            ax.imshow(np.clip(im, 0, 1), cmap="gray", vmin=0, vmax=1)
            label = name if name == "clean" else f"{name}\n{psnr(im, clean):.2f} dB"
            ax.set_title(label, fontsize=8)
        row[0].set_ylabel(task, fontsize=8)
    fig.suptitle("Seed Ex. 20: plug-and-play priors (PSNR vs the clean image)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
