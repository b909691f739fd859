"""Recipe `ulm-lista`: the convolutional LISTA of ULM (seed Fig. 7) on sim:ceus bubble frames.

Data: 128 x 128 sim:ceus simulations at the defaults (CORONA's in-silico setup), one frame
every `STRIDE` frames, tiled into 8 x 8 patches. Input = the I/Q of the separated bubbles
as a perfect clutter filter leaves them: data - tissue = bubbles + the PSF-filtered noise
(the truth; CORONA's output approximates it). Target = the true positions on the 8x finer
64 x 64 grid (1 at the nearest fine pixel of each bubble inside the patch; uint8 until the
loss). Loss (Deep-ULM, van Sloun et al. 2019): MSE between the Gaussian-smoothed (sigma 1 fine
pixel, peak 1) output and target, so that a localization one fine pixel off is not a miss.
Train, validation and test sets from simulator seeds 11, 12, 13.

After training, the localizer's threshold is chosen on the validation patches (the fraction of
`FRACTIONS` of the 99.9th percentile of the smoothed output with the best Jaccard index at a
0.5-pixel tolerance) and the card gets the test
Jaccard index and RMSE. Budget: FULL = 8,192 training patches (32 simulations x 1 frame),
1,500 steps of batch 8 (~1.5 epochs; 10 min on one shared core, measured): far below the paper's sets
and budgets. 8 x 8 patches keep the fine grid small; the network is convolutional and runs on any
frame size.
model.onnx is traced at the live 128 x 128 frame (fine grid 1024 x 1024; `quick`: 32 x 32);
torch takes any size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drivers.sim.ceus import CeusParams, CeusSimulator
from engines.imaging.ulm import (
    FACTOR,
    Matching,
    build_network,
    fine_index,
    gaussian_blur_kernel,
    localization_positions,
    match,
    smooth,
    true_positions,
)
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.trainer import TrainConfig, Trainer

TRAIN_SEED, VAL_SEED, TEST_SEED = 11, 12, 13
PATCH = 8
FIELD = 128  # simulated field, tiled into (FIELD // PATCH)^2 patches
STRIDE = 5  # frames between the frames kept from one simulation (their bubbles have moved)
TOLERANCE = 0.5  # coarse pixels (60 um): a localization farther from every bubble is a false one
FRACTIONS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # of the validation 99.9th percentile of G * s
LOSS_SIGMA = 1.0  # fine pixels
ARCH = {"n_layers": 8, "kernel": [5, 7]}


@dataclass(frozen=True)
class Size:
    field: int  # simulated field, tiled into patches; model.onnx is traced at this frame size
    train_sims: int
    val_sims: int
    test_sims: int
    frames: int  # kept frames per simulation
    steps: int
    batch: int


FULL = Size(field=FIELD, train_sims=32, val_sims=1, test_sims=2, frames=1, steps=1500, batch=8)
QUICK = Size(field=32, train_sims=1, val_sims=1, test_sims=1, frames=1, steps=3, batch=8)


@dataclass
class PatchSet:
    """I/Q patches x (N, 1, 2, P, P), targets y (N, fP, fP) uint8, true positions per patch."""

    x: torch.Tensor
    y: torch.Tensor
    positions: list[np.ndarray]


def patch_set(seed: int, n_sims: int, frames: int, field: int = FIELD) -> PatchSet:
    """Patches of `n_sims` field x field simulations (seeds [seed, j]), `frames` frames each, STRIDE apart."""
    tiles = field // PATCH
    xs, ys, pos = [], [], []
    for j in range(n_sims):
        sim = CeusSimulator(CeusParams(height=field, width=field, seed=seed), seed=[seed, j])
        for _ in range(frames):
            f = sim.frames(STRIDE)
            S = f["data"][-1] - f["tissue"][-1]
            live = f["positions"][-1]
            for a in range(tiles):
                for b in range(tiles):
                    xs.append(S[:, a * PATCH:(a + 1) * PATCH, b * PATCH:(b + 1) * PATCH])
                    p = true_positions(live - np.array([a * PATCH, b * PATCH]), (PATCH, PATCH))
                    y = np.zeros((PATCH * FACTOR, PATCH * FACTOR), np.uint8)
                    r, c = np.clip(fine_index(p), 0, PATCH * FACTOR - 1).T
                    y[r, c] = 1
                    ys.append(y)
                    pos.append(p)
    return PatchSet(torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys)), pos)


_LOSS_KERNEL = gaussian_blur_kernel(LOSS_SIGMA)


def smoothed_mse(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MSE(G * s, G * y), G the peak-1 Gaussian of LOSS_SIGMA fine pixels (Deep-ULM's loss)."""
    return F.mse_loss(smooth(s, _LOSS_KERNEL), smooth(y.to(s.dtype), _LOSS_KERNEL))


def localization_scores(model, data: PatchSet, thresholds) -> dict[float, Matching]:
    """The Matching of each localizer threshold on `data` (the model's intensity computed once)."""
    with torch.no_grad():
        s = model.intensity(data.x)
    out = {}
    for t in thresholds:
        model.localizer.threshold.fill_(t)
        with torch.no_grad():
            loc = model.localizer(s).numpy()
        total = Matching(0, 0, 0, np.zeros(0))
        for k, p in enumerate(data.positions):
            total = total + match(localization_positions(loc[k]), p, TOLERANCE)
        out[t] = total
    return out


class UlmRecipe(Recipe):
    """ulm-lista (see the module docstring)."""

    name = "ulm-lista"
    description = ("ULM super-resolution (seed Fig. 7): convolutional LISTA, 8 layers, 8x finer grid; "
                   "sim:ceus 8 x 8 bubble patches")
    seed = 0

    def build(self, quick: bool) -> Plan:
        size = QUICK if quick else FULL
        train = patch_set(TRAIN_SEED, size.train_sims, size.frames, size.field)
        val = patch_set(VAL_SEED, size.val_sims, size.frames, size.field)
        test = patch_set(TEST_SEED, size.test_sims, size.frames, size.field)
        model = build_network(ARCH)
        model.intensity_output = True

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            m = trainer.model
            test_loss = float(trainer.evaluate((test.x, test.y)))
            with torch.no_grad():
                g = m.localizer.intensity(m.intensity(val.x))
            scale = float(torch.quantile(g.flatten()[::7], 0.999)) or 1.0
            scores = localization_scores(m, val, [round(f * scale, 6) for f in FRACTIONS])
            best = max(scores, key=lambda t: scores[t].jaccard)
            result = localization_scores(m, test, (best,))[best]
            m.localizer.threshold.fill_(best)
            m.intensity_output = False
            return {"threshold": best,
                    "validation_jaccard": {str(t): round(v.jaccard, 4) for t, v in scores.items()},
                    "test_jaccard": round(result.jaccard, 4),
                    "test_rmse_px": round(result.rmse, 4) if result.tp else None,
                    "test_rmse_um": round(result.rmse * 120, 2) if result.tp else None,
                    "test_tp_fp_fn": [result.tp, result.fp, result.fn],
                    "test_patches": len(test.positions), "tolerance_px": TOLERANCE,
                    "test_loss": round(test_loss, 6)}

        card = {
            "task": "super-resolution",
            "family": "unfolded",
            "description": self.description,
            "architecture": {"name": "ulm-lista", "kwargs": ARCH},
            "input": {"shape": ["N", 1, 2, size.field, size.field], "window": 1, "dtype": "float32",
                      "normalization": "envelope / 3, the simulator's mean bubble modulus (in the module)",
                      "meaning": "the newest frame of separated bubbles S, channels [I, Q]"},
            "output": {"shape": ["N", 1, 1, size.field * FACTOR, size.field * FACTOR], "dtype": "float32",
                       "meaning": "localizations on the 8x finer grid (1 per bubble); fine pixel j is at "
                                  "coarse coordinate (j + 0.5) / 8 - 0.5"},
            "training": {
                "data": (f"sim:ceus defaults, {size.field} x {size.field} simulations, frame {STRIDE} "
                         f"of each, tiled into {PATCH} x {PATCH} patches: {len(train.positions)} train (seed "
                         f"{TRAIN_SEED}), {len(val.positions)} val (seed {VAL_SEED}), "
                         f"{len(test.positions)} test (seed {TEST_SEED}); input data - tissue, target the "
                         "true positions on the 8x grid"),
                "loss": f"MSE of the outputs smoothed by a peak-1 Gaussian of sigma {LOSS_SIGMA} fine pixel",
                "validation_metric": "smoothed MSE; the localizer threshold by validation Jaccard",
                "budget": f"{size.steps} steps of batch {size.batch} on one CPU core",
            },
        }
        return Plan(model=model, loss_fn=smoothed_mse, train_data=(train.x, train.y), val_data=(val.x, val.y),
                    config=TrainConfig(lr=2e-3, max_steps=size.steps, batch_size=size.batch,
                                       eval_every=max(1, size.steps // 6), device="cpu"),
                    evaluate=evaluate, card=card)


RECIPES = (UlmRecipe(),)
