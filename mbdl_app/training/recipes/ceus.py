"""Recipes for clutter suppression on sim:ceus: CORONA (`corona-ceus`) and the ResNet (`resnet-ceus`).

The in-silico setup of ANCHORS.md "CORONA" (Solomon et al., IEEE TMI 2019): windows of
32 x 32 pixels x 20 frames tiled from 128 x 128 simulations (drivers.sim.ceus.windows), the
simulator's defaults (0.12 mm pixels, PSF sigma (0.14, 0.32) mm, tissue U(0.6, 1), bubble
amplitude 3, noise 0.1 before the PSF); 2,400 train, 64 validation and 160 test windows from
different simulator seeds. CORONA's loss is the anchors' 0.5 MSE(L) + 0.5 MSE(S) (the
module's `pair_output` view); the ResNet predicts S only, so its loss is MSE(S). The
validation metric of both is MSE(S); the best validated weights are kept. Adam.

Budgets: `corona-ceus` runs 5,000 steps of batch 8 (16.7 epochs of the 2,400 windows) at Adam
lr 2e-3 (the anchors') with a cosine decay to 2 % and gradient clipping at norm 1, validating every
250 steps and keeping the best: ~80 min on ONE core (one step ~0.95 s: the SVT's Newton-Schulz
products dominate the backward pass), inside the issue's ~2 h on 2 cores. The paper's 50
epochs of batch 40 (3,000 steps, 120k windows seen) would be ~3x that. `resnet-ceus` runs 10,000
steps of batch 40 (167 epochs) at 2e-3 with the same decay and clipping (~35 min on one core: a
budget like CORONA's; at 2,000 steps it was still improving, test MSE(S) 0.161). Recipe.run exports model.onnx
(engines/export.py: input "x", output "y", dynamic N) at the card's input shape,
the live 128 x 128 frame; the torch module takes any H x W.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from drivers.sim.ceus import CeusParams, windows
from engines.imaging.clutter import ARCHITECTURES, build_separator
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.schedules import Constant, Cosine
from mbdl_app.training.trainer import TrainConfig, Trainer

TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 3  # CeusParams.seed of the three sets
WINDOW, PATCH = 20, 32
LIVE_SIZE = 128  # model.onnx is traced at the live frame size (fixed H, W; torch takes any); quick: patch


@dataclass(frozen=True)
class Size:
    train: int
    val: int
    test: int
    patch: int


FULL = Size(train=2400, val=64, test=160, patch=PATCH)
QUICK = Size(train=16, val=8, test=8, patch=16)


@dataclass(frozen=True)
class Method:
    arch: str
    description: str
    kwargs: dict[str, Any]
    steps: int
    batch: int
    lr: float
    pair: bool  # trained on (L, S) (CORONA) or S alone (the ResNet)
    cosine: bool = False  # lr decays by a cosine to 2 % of lr (else constant)
    grad_clip: float | None = None
    eval_every: int | None = None  # default: 4 validations per run


METHODS = {
    "corona": Method("corona", "CORONA (Solomon et al. 2019): 10 unfolded RPCA layers, learned convolutions "
                     "and thresholds", {"n_layers": 10}, steps=5000, batch=8, lr=2e-3, pair=True,
                     cosine=True, grad_clip=1.0, eval_every=250),
    "resnet": Method("resnet", "black-box baseline of seed Fig. 6: ResNet of 10 complex convolutions",
                     {"window": WINDOW, "channels": 8}, steps=10000, batch=40, lr=2e-3, pair=False,
                     cosine=True, grad_clip=1.0, eval_every=250),
}


def ceus_sets(size: Size) -> dict[str, dict[str, torch.Tensor]]:
    """Train / val / test windows D, L, S (N, T, 2, patch, patch) from simulator seeds 1, 2, 3."""
    out = {}
    for name, n, seed in (("train", size.train, TRAIN_SEED), ("val", size.val, VAL_SEED),
                          ("test", size.test, TEST_SEED)):
        w = windows(CeusParams(seed=seed), n, WINDOW, size.patch)
        out[name] = {k: torch.from_numpy(w[k]) for k in "DLS"}
    return out


def mse_of_S(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the bubbles S; pred/target are S, or the pair stack([L, S], 1)."""
    if pred.ndim == 6:
        pred, target = pred[:, 1], target[:, 1]
    return F.mse_loss(pred, target)


class CeusRecipe(Recipe):
    """One separator trained on sim:ceus windows (see the module docstring)."""

    seed = 0

    def __init__(self, method: str) -> None:
        self.method = METHODS[method]
        self.name = f"{method}-ceus"
        self.description = f"{self.method.description}; sim:ceus 32 x 32 x 20 windows"

    def build(self, quick: bool) -> Plan:
        size, m = (QUICK if quick else FULL), self.method
        sets = ceus_sets(size)
        model = build_separator(m.arch, **m.kwargs)

        def pair(s: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return s["D"], torch.stack([s["L"], s["S"]], dim=1) if m.pair else s["S"]

        if m.pair:
            model.pair_output = True
        test = pair(sets["test"])

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            metrics: dict[str, Any] = {"test_mse_S": round(float(trainer.evaluate(test)), 6),
                                       "test_mse_S_zero": round(float(sets["test"]["S"].square().mean()), 6),
                                       "test_windows": size.test, "test_seed": TEST_SEED}
            if m.pair:
                with torch.no_grad():
                    its = trainer.model.iterates(sets["test"]["D"])
                metrics["test_mse_S_per_layer"] = [round(float(F.mse_loss(S, sets["test"]["S"])), 6)
                                                   for _, S in its]
            return metrics

        steps = 3 if quick else m.steps
        side = size.patch if quick else LIVE_SIZE
        card = {
            "task": "clutter-suppression",
            "family": ARCHITECTURES[m.arch].family,
            "description": self.description,
            "architecture": {"name": m.arch, "kwargs": m.kwargs},
            "input": {"shape": ["N", WINDOW, 2, side, side], "window": WINDOW, "dtype": "float32",
                      "normalization": "none (CORONA is scale-equivariant; the ResNet is trained at the "
                                       "simulator's level)",
                      "meaning": "windows of complex I/Q frames D, channels [I, Q]"},
            "output": {"shape": ["N", WINDOW, 2, side, side], "dtype": "float32",
                       "meaning": "the bubble (contrast) signal S of every frame of the window"},
            "training": {
                "data": (f"sim:ceus defaults, {size.patch} x {size.patch} x {WINDOW} windows tiled from "
                         f"128 x 128 simulations: {size.train} train (seed {TRAIN_SEED}), {size.val} val "
                         f"(seed {VAL_SEED}), {size.test} test (seed {TEST_SEED})"),
                "loss": "0.5 MSE(L) + 0.5 MSE(S)" if m.pair else "MSE(S)",
                "validation_metric": "MSE(S)",
                "budget": (f"{steps} steps of batch {m.batch} on one CPU core (paper: 50 epochs of batch "
                           "40); "
                           "an issue-sized budget is ~2 h on 2 cores"),
            },
        }
        return Plan(model=model, loss_fn=F.mse_loss, train_data=pair(sets["train"]),
                    val_data=pair(sets["val"]),
                    config=TrainConfig(lr=m.lr, max_steps=steps, batch_size=min(m.batch, size.train),
                                       schedule=Cosine(final=0.02) if m.cosine else Constant(),
                                       grad_clip=m.grad_clip,
                                       eval_every=(m.eval_every if m.eval_every and not quick
                                                   else max(1, steps // 4)),
                                       device="cpu"),
                    evaluate=evaluate, card=card, metric_fn=mse_of_S)


RECIPES = (CeusRecipe("corona"), CeusRecipe("resnet"))
