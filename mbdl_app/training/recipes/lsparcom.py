"""Recipe `lsparcom`: LSPARCOM (seed Fig. 8) on sim:smlm stacks, the unfolding of SPARCOM's ISTA step.

Data (ANCHORS.md "LSPARCOM"): stacks of WINDOW = 350 frames of a 64 x 64 field (drivers.sim.smlm
at its defaults: 100 nm pixels, PSF sigma 99 nm, 1,000 photons, background 20), one simulation
(its own filaments) per stack, the density of emitters per frame cycled over DENSITIES (sparse
to the high-density regime). Input: the stack's correlation data g = U M / max(M)
(engines.imaging.sparcom.correlation_input, the x4 grid). Target: the temporal variance of the
true emitters' intensities on the x4 grid (each emitter's variance of photons x its ON fraction
over the stack, added into its fine pixel), spread over its 3 x 3 neighbourhood by a Gaussian of
sigma one fine pixel (25 nm, the filament's width: a one-pixel tolerance), divided by its mean
over the support (support values ~1). Without that tolerance the support is a one-pixel-wide
broken line that no network of this size hits exactly, and the MSE + L1 loss is lowest at an
all-zero output: the first 1,000-step run collapsed there (validation loss 0.03775 vs 0.03562 for
zero, image correlation 0.10; measured); with it the validation loss falls steadily (0.078 ->
0.060 in 400 steps, zero: 0.127). Training examples: 16 x 16-pixel patches (64 x 64 fine) cut at
random from the stacks, each turned by a random multiple of 90 degrees and mirrored at random (the
anchors' rotations), drawn afresh every step. Loss (the reference code's): MSE on the support +
L1 of the output off it, averaged over the pixels. Adam from lr 2e-3 (the anchors' 1e-4 is for
~10k examples x many epochs; this budget is shorter) with a cosine decay to 2 %, batch 50 (the
anchors'), gradient clipping at norm 1. Initialization: SPARCOM's kernels (LSPARCOM.init_from).

Held-out figures (card `metrics`), on full 64 x 64 stacks of other simulator seeds at a sparse
(0.5 / um^2) and a dense (3 / um^2) density: image correlation and NMSE against the filament
image (engines.imaging.smlm_metrics, 25 nm blur) and localization figures (local maxima of the
SR image above a fraction of its maximum, the fraction chosen on validation stacks for the best
Jaccard; truth = the distinct emitters ON in the stack; 250 nm matching), with SPARCOM at 100
iterations (its own fraction chosen the same way) beside it. Seeds: train 41, validation 42,
test 43 (simulation j seeded [seed, j]).

Budget: FULL = 48 training stacks, 5,000 steps of batch 50 on one core (0.2 s a step on a quiet
core, 0.45 s measured on the shared 2-core box: 35-40 min with the data and evaluations).
model.onnx is traced at a 64 x 64 x 350 window; H and W stay dynamic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from drivers.sim.smlm import SmlmParams, SmlmSimulator
from engines.imaging.lsparcom import LSPARCOM, weight_counts
from engines.imaging.smlm_metrics import (
    image_correlation,
    image_nmse,
    localize_image,
    match_nm,
    pooled,
    scores,
    stack_truth,
)
from engines.imaging.sparcom import UPSAMPLE, WINDOW, Sparcom, correlation_input
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.schedules import Cosine
from mbdl_app.training.trainer import TrainConfig, Trainer

TRAIN_SEED, VAL_SEED, TEST_SEED = 41, 42, 43
PATCH = 16  # camera pixels; 64 fine pixels
DENSITIES = (0.3, 0.5, 1.0, 2.0, 3.0, 4.0)  # emitters per um^2 per frame, cycled over the stacks
SPARSE, DENSE = 0.5, 3.0  # the held-out densities
FRACTIONS = tuple(float(f) for f in np.geomspace(0.01, 0.5, 12))  # localization threshold / image max
RADIUS = 2  # fine pixels (x4 grid): maxima closer than 2.5 x 25 nm are one
TRUTH_FINE_NM = 12.5  # the filament image's pixel (8x grid)
# the target's one-pixel tolerance: a 3 x 3 Gaussian of sigma 1 fine pixel (25 nm), peak 1
TARGET_BLUR = np.exp(-0.5 * (np.arange(-1, 2)[:, None] ** 2 + np.arange(-1, 2)[None, :] ** 2))
ARCH: dict[str, Any] = {}  # LSPARCOM's defaults: 10 folds, x4, 25 x 25 and 29 x 29 kernels


@dataclass(frozen=True)
class Size:
    field: int  # camera pixels; model.onnx is traced at this size
    frames: int  # frames per stack
    train: int  # training stacks
    held_out: int  # validation and test stacks per held-out density
    steps: int
    batch: int


FULL = Size(field=64, frames=WINDOW, train=48, held_out=3, steps=5000, batch=50)
QUICK = Size(field=16, frames=20, train=2, held_out=1, steps=3, batch=4)


@dataclass
class Stack:
    """One simulated stack: correlation data g and target on the x4 grid, filament image (8x),
    the distinct emitters ON (nm), and the frames (T, H, W) float32 ADU."""

    g: torch.Tensor
    target: torch.Tensor
    filament: np.ndarray
    truth: np.ndarray
    frames: np.ndarray


def simulate(density: float, seed: list[int], frames: int, field: int) -> Stack:
    """A stack of `frames` frames at `density` (simulator seed `seed`) and its training target."""
    p = SmlmParams(size=field, density=density)
    sim = SmlmSimulator(p, seed=seed)
    data = np.empty((frames, field, field), np.float32)
    total = np.zeros(sim.n_emitters)
    squares = np.zeros(sim.n_emitters)
    positions = []
    for t in range(frames):
        data[t], xy = sim.next_frame()
        positions.append(xy)
        intensity = p.photons * sim.on_time
        total += intensity
        squares += intensity**2
    variance = (squares - total**2 / frames) / (frames - 1)
    fine_nm = p.pixel_nm / UPSAMPLE
    n = field * UPSAMPLE
    rc = np.clip(np.floor(sim.emitters[:, ::-1] / fine_nm).astype(np.int64), 0, n - 1)  # [row, col]
    spikes = np.zeros((n, n))
    np.add.at(spikes, (rc[:, 0], rc[:, 1]), variance)
    target = ndimage.correlate(spikes, TARGET_BLUR, mode="constant")
    support = target > 0
    target /= target[support].mean() if support.any() else 1.0
    g = correlation_input(torch.from_numpy(data)[None, :, None], UPSAMPLE)[0]
    target_t = torch.from_numpy(target.astype(np.float32))
    return Stack(g, target_t, sim.filament_image(8), stack_truth(positions), data)


def stacks(seed: int, densities, n: int, frames: int, field: int) -> list[Stack]:
    return [simulate(densities[j % len(densities)], [seed, j], frames, field) for j in range(n)]


def support_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE on the true support + L1 of the prediction off it, averaged over the pixels."""
    return torch.where(target > 0, (pred - target).square(), pred.abs()).mean()


class OnCorrelationData(nn.Module):
    """Training view of the artifact's module (engines.imaging.lsparcom.StackSR): the same `net`
    (so the same state dict), called on correlation data g (N, uH, uW) instead of frames."""

    def __init__(self, net: LSPARCOM) -> None:
        super().__init__()
        self.net = net

    def forward(self, g: torch.Tensor) -> torch.Tensor:
        return self.net(g)


def patch_batches(train: list[Stack], batch: int, patch: int = PATCH):
    """fn(step, generator) -> (g, target) (batch, 64, 64): random patches, turned and mirrored."""
    P = patch * UPSAMPLE
    n = train[0].g.shape[-1] // UPSAMPLE - patch + 1  # patch starts on the camera grid

    def fn(step: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(train), (batch,), generator=gen)
        r, c = (UPSAMPLE * torch.randint(n, (batch,), generator=gen) for _ in range(2))
        turns = torch.randint(4, (batch,), generator=gen)
        mirror = torch.rand(batch, generator=gen) < 0.5
        gs, ts = [], []
        for i in range(batch):
            s = train[int(idx[i])]
            pair = torch.stack([s.g[r[i]:r[i] + P, c[i]:c[i] + P], s.target[r[i]:r[i] + P, c[i]:c[i] + P]])
            pair = torch.rot90(pair, int(turns[i]), dims=(1, 2))
            pair = pair.transpose(1, 2) if mirror[i] else pair
            gs.append(pair[0])
            ts.append(pair[1])
        return torch.stack(gs), torch.stack(ts)

    return fn


def sr_images(method, held: list[Stack]) -> list[np.ndarray]:
    """SR images (x4 grid) of held-out stacks: `method` maps g (1, uH, uW) -> (1, uH, uW)."""
    with torch.no_grad():
        return [method(s.g[None])[0].numpy() for s in held]


def localization_matching(image: np.ndarray, truth: np.ndarray, fraction: float, fine_nm: float):
    return match_nm(localize_image(image, fine_nm, fraction * float(image.max()), RADIUS), truth)


def best_fraction(images: list[np.ndarray], held: list[Stack], fine_nm: float) -> tuple[float, dict]:
    """The FRACTIONS entry with the best pooled Jaccard on the given stacks, and the curve."""
    pairs = list(zip(images, held, strict=True))
    curve = {f: pooled(localization_matching(im, s.truth, f, fine_nm) for im, s in pairs).jaccard
             for f in FRACTIONS}
    return max(curve, key=curve.get), {f"{f:.4g}": round(j, 4) for f, j in curve.items()}


def held_out_figures(images: list[np.ndarray], held: list[Stack], fraction: float, fine_nm: float) -> dict:
    """Image correlation and NMSE (means over the stacks) and pooled localization figures."""
    pairs = list(zip(images, held, strict=True))
    m = pooled(localization_matching(im, s.truth, fraction, fine_nm) for im, s in pairs)
    return {"image_correlation": round(float(np.mean([image_correlation(im, s.filament, TRUTH_FINE_NM)
                                                       for im, s in pairs])), 4),
            "image_nmse": round(float(np.mean([image_nmse(im, s.filament, TRUTH_FINE_NM)
                                               for im, s in pairs])), 4),
            **scores(m).as_dict()}


class LsparcomRecipe(Recipe):
    """lsparcom (see the module docstring)."""

    name = "lsparcom"
    description = ("LSPARCOM (seed Fig. 8): SPARCOM's ISTA step unfolded, 10 folds of radially symmetric "
                   "convolutions and percentile thresholds on the x4 grid; sim:smlm stacks of 350 frames")
    seed = 0

    def build(self, quick: bool) -> Plan:
        size = QUICK if quick else FULL
        train = stacks(TRAIN_SEED, DENSITIES, size.train, size.frames, size.field)
        val = {d: stacks(VAL_SEED, (d,), size.held_out, size.frames, size.field) for d in (SPARSE, DENSE)}
        test = {d: stacks(TEST_SEED, (d,), size.held_out, size.frames, size.field) for d in (SPARSE, DENSE)}
        val_all = val[SPARSE] + val[DENSE]
        net = LSPARCOM(**ARCH)
        model = OnCorrelationData(net)
        fine_nm = SmlmParams().pixel_nm / UPSAMPLE
        val_patches = patch_batches(val_all, 4 * size.batch)(0, torch.Generator().manual_seed(VAL_SEED))
        sparcom = Sparcom(n_iter=100).solve

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            trainer.model.eval()
            methods = {"lsparcom": trainer.model, "sparcom_100": sparcom}
            test_patches = patch_batches(test[SPARSE] + test[DENSE], 4 * size.batch)(
                0, torch.Generator().manual_seed(TEST_SEED))
            out: dict[str, Any] = {"test_loss": round(float(trainer.evaluate(test_patches)), 6)}
            for name, method in methods.items():
                fraction, curve = best_fraction(sr_images(method, val_all), val_all, fine_nm)
                out[name] = {"localization_threshold_fraction": fraction, "validation_jaccard": curve}
                for d, label in ((SPARSE, "sparse"), (DENSE, "dense")):
                    images = sr_images(method, test[d])
                    out[name][f"test_{label}"] = held_out_figures(images, test[d], fraction, fine_nm)
            out["weights"] = weight_counts(net)
            out["test_stacks_per_density"] = size.held_out
            out["densities_per_um2"] = {"sparse": SPARSE, "dense": DENSE}
            return out

        card = {
            "task": "super-resolution",
            "family": "unfolded",
            "description": self.description,
            "architecture": {"name": "lsparcom", "kwargs": ARCH},
            "input": {"shape": ["N", size.frames, 1, size.field, size.field], "window": size.frames,
                      "dtype": "float32",
                      "normalization": "none outside the module: the temporal variance is divided by its "
                                       "maximum inside it (gain and offset drop out)",
                      "meaning": "a stack (window) of camera frames in ADU, one channel"},
            "output": {"shape": ["N", 1, 1, size.field * UPSAMPLE, size.field * UPSAMPLE], "dtype": "float32",
                       "meaning": "the super-resolved image of the window on the x4 grid (fine pixel (r, c) "
                                  "covers x in [c p / 4, (c + 1) p / 4)); arbitrary intensity unit"},
            "training": {
                "data": (f"sim:smlm defaults, {size.field} x {size.field} stacks of {size.frames} frames, "
                         f"density cycled over {list(DENSITIES)} / um^2: {size.train} train stacks (seed "
                         f"{TRAIN_SEED}), {size.held_out} validation (seed {VAL_SEED}) and test (seed "
                         f"{TEST_SEED}) stacks at each of {SPARSE} and {DENSE} / um^2; random "
                         f"{PATCH} x {PATCH} patches, turned and mirrored, drawn every step"),
                "loss": "MSE on the true-support pixels + L1 off the support (target: the emitters' "
                        "temporal variance on the x4 grid, spread over 3 x 3 pixels (sigma 25 nm), / its "
                        "mean over the support)",
                "validation_metric": "the loss on fixed validation patches",
                "budget": f"{size.steps} steps of batch {size.batch} on one CPU core",
            },
        }
        return Plan(model=model, loss_fn=support_loss, train_data=patch_batches(train, size.batch),
                    val_data=val_patches,
                    config=TrainConfig(lr=2e-3, max_steps=size.steps, batch_size=size.batch,
                                       schedule=Cosine(final=0.02), grad_clip=1.0,
                                       eval_every=max(1, min(500, size.steps // 4)), device="cpu"),
                    evaluate=evaluate, card=card)


RECIPES = (LsparcomRecipe(),)
