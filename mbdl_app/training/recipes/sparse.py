"""Recipes for the sparse-coding benchmark: LISTA, LISTA-CPSS, ALISTA, learned/unfolded ADMM.

The standard benchmark of ANCHORS.md ("Sparse recovery / LISTA family"; Chen et al.
NeurIPS 2018, Liu et al. ICLR 2019): H 250 x 500 fixed by seed 0 (`sensing_matrix`), codes
Bernoulli(0.1)-Gaussian, noiseless or at SNR 40 / 20 dB; 16 layers; batches of 64 drawn on
the fly; a fixed validation set of 1000 problems. Scalar-parameter models (ALISTA, unfolded
ADMM) train stage-wise, layer t added at a time: the new layer alone, then layers 1..t at
two smaller lrs. LISTA and LISTA-CPSS (6 M and 2 M parameters) would need ~10^5 such steps
(the papers' budget); on 2 CPU cores they instead start from a trained ALISTA with the same
support selection (W_k = gamma_k W, `warm_start_from_alista`) and fine-tune every layer at
small lrs. The learned ADMM variants start from the validation-tuned ADMM (`tune_admm`).
Every stage keeps its best validated weights, so it never makes the validation NMSE worse. Loss: MSE
of the last layer's code; validation metric: NMSE dB. The card's metrics are NMSE dB per
layer 0..16 on a fresh held-out set of 1000 problems (its own seed).

Recipe names: `<method>-cs` (noiseless), `<method>-cs-snr40`, `<method>-cs-snr20`, for the
methods in METHODS. Budgets are CPU-sized, far shorter than the papers' (which train each
stage to a plateau, ~10^5 steps in all); `Method.steps` gives the steps of the three
stages of each layer, scaled down for the noisy settings (NOISY_STEPS). Methods with a handful
of scalar parameters (ALISTA, learned and unfolded ADMM) use 10x the papers' lrs, or their
few hundred steps would not move them.

Learned ADMM (seed Ex. 14) is a learned optimizer with tied lambda, mu: it has no layers
to add and is trained at a FINITE 16 iterations (two stages, all its parameters). Trained
through "convergence" it would get no gradient: the lasso minimizer does not depend on
(lambda, mu).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engines.imaging.admm import ADMM, L1Prox
from engines.imaging.ista import ALISTA, SupportSelection, warm_start_from_alista
from engines.sparse_models import ARCHITECTURES, OPERATOR_KEY, build_sparse_model
from engines.sparse_problem import SparseBatch, SparseProblem, nmse_db
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.seeding import derive_seed
from mbdl_app.training.trainer import Stage, TrainConfig, Trainer, TrainResult

H_SEED = 0  # the benchmark's one fixed H = sensing_matrix(250, 500, 0), as engines.load("ista") uses
VAL_SEED, TEST_SEED = 1001, 1002  # fixed validation and held-out sets (training batches: the trainer's seeds)
P = 0.1
BATCH = 64
NOISE: dict[str, float | None] = {"": None, "-snr40": 40.0, "-snr20": 20.0}
EVAL_EVERY = 250  # validation (1000 problems) every 250 steps and at the end of each stage; best kept
NOISY_STEPS = {40.0: 0.5, 20.0: 0.15}  # with noise the learned methods level off near -SNR sooner


@dataclass(frozen=True)
class Size:
    """Problem and training size: the benchmark's, or a tiny one for tests (quick)."""

    m: int
    n: int
    layers: int
    val: int
    test: int


FULL = Size(m=250, n=500, layers=16, val=1000, test=1000)
QUICK = Size(m=40, n=80, layers=3, val=100, test=200)


@dataclass(frozen=True)
class Method:
    """One learned method: architecture (engines.sparse_models), its kwargs, lrs and steps.

    layerwise: stage-wise growth, 3 stages per layer (new layer at lrs[0], all at lrs[1],
    lrs[2]) with `steps` per stage; otherwise two stages on everything at lrs[0], lrs[1]
    with steps[0], steps[1]. `warm_new_layer`: a new layer starts from the previous layer's
    parameters instead of the model-based initial values. `init`: where training starts —
    "model-based" (ISTA / ADMM at the kwargs' values), "tuned" (ADMM at the (rho, lambda)
    of the validation grid, `tune_admm`), or "alista" (an ALISTA with the same support
    selection is trained first with ALISTA's schedule and copied in, `warm_start_from_alista`).
    """

    arch: str
    description: str
    steps: tuple[int, int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    lrs: tuple[float, float, float] = (5e-4, 1e-4, 1e-5)
    layerwise: bool = True
    warm_new_layer: bool = False
    init: str = "model-based"


SCALAR_LRS = (5e-3, 1e-3, 1e-4)
SUPPORT = {"q_step": 0.012, "q_max": 0.13}  # the anchors' support selection: 1.2 %/layer up to 13 %

FINE_LRS = (3e-5, 1e-5, 0.0)  # matrices fine-tuned from ALISTA's values: larger lrs undo them
METHODS: dict[str, Method] = {
    "lista": Method("lista", "LISTA (seed Ex. 17): W1_k, W2_k, theta_k per layer", (9000, 3000, 0),
                    {"rho": 0.4}, lrs=FINE_LRS, layerwise=False, init="alista"),
    "lista-cpss": Method("lista-cpss", "LISTA-CPSS (Chen et al. 2018): coupled W_k, support selection",
                         (3000, 1000, 0), {"rho": 0.4, "support": SUPPORT}, lrs=(2e-5, 4e-6, 0.0),
                         layerwise=False, init="alista"),
    "alista": Method("alista", "ALISTA (Liu et al. 2019): analytic W, gamma_k and theta_k learned, SS",
                     (80, 80, 40), {"rho": 0.4, "support": SUPPORT}, lrs=SCALAR_LRS, warm_new_layer=True),
    "learned-admm": Method("learned-admm", "learned ADMM (seed Ex. 14): tied lambda, mu at 16 iterations",
                           (600, 300, 0), {"rho": 0.4, "lam": 0.5, "mu": 1.0},
                           lrs=(2e-2, 2e-3, 0.0), layerwise=False, init="tuned"),
    "unfolded-admm": Method("unfolded-admm", "unfolded ADMM (seed Ex. 15): lambda_k, mu_k per layer",
                            (80, 80, 40), {"rho": 0.4, "lam": 0.5, "mu": 1.0}, lrs=SCALAR_LRS, init="tuned"),
    "unfolded-admm-weights": Method("unfolded-admm-weights",
                                    "unfolded ADMM (seed Ex. 16): W1_k, W2_k, lambda_k, mu_k per layer",
                                    (80, 80, 40), {"rho": 0.4, "lam": 0.5, "mu": 1.0}, init="tuned"),
}
# lasso weights (the anchors' 0.4 and smaller) and penalties lambda (2 lambda = the augmented
# Lagrangian's), wide enough that the best point is inside the grid (measured)
ADMM_RHO_GRID = (0.4, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
ADMM_LAM_GRID = (0.003, 0.006, 0.0125, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def tune_admm(H: torch.Tensor, val: SparseBatch, n_iter: int) -> dict[str, float]:
    """(rho, lam) of ADMM (mu = 1) with the best validation NMSE at n_iter iterations, over the grid.

    The tuned model-based point the learned ADMM variants start from (and the "ADMM"
    line of `mbdl bench sparse`): a learned optimizer that started at rho = 0.4 would be
    chained to that lasso's minimizer, which no (lambda, mu) can move.
    """
    best: dict[str, float] | None = None
    with torch.inference_mode():
        for rho in ADMM_RHO_GRID:
            for lam in ADMM_LAM_GRID:
                score = nmse_db(ADMM(H, prox=L1Prox(rho), lam=lam, n_iter=n_iter)(val.x), val.s)
                if best is None or score < best["val_nmse_db"]:
                    best = {"rho": rho, "lam": lam, "val_nmse_db": round(score, 3)}
    assert best is not None
    return best


@dataclass(frozen=True)
class LayerStage(Stage):
    """A Stage run with the first `layers` layers, training only the last one if `new_layer_only`."""

    layers: int = 1
    new_layer_only: bool = False


def copy_previous_layer(model: nn.Module, k: int, n_layers: int) -> None:
    """Set row k of every per-layer parameter (leading dim n_layers) to row k - 1.

    ALISTA needs it: with 13 % support selection, a new layer at the initial threshold
    zeroes the small true entries, and those give no gradient to lower it (measured:
    -38.5 dB at 10 layers fell to -27.5 dB when layer 11 was added at the initial values).
    """
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 1 and p.shape[0] == n_layers:
                p[k] = p[k - 1]


@contextmanager
def only_layer(model: nn.Module, k: int, n_layers: int):
    """Zero the gradient of every per-layer parameter (leading dim n_layers) except row k.

    With a fresh Adam per stage, rows whose gradient is exactly zero keep m = v = 0 and do
    not move: the stage trains layer k alone.
    """
    handles = []
    for p in model.parameters():
        if p.ndim >= 1 and p.shape[0] == n_layers:
            mask = torch.zeros((n_layers,) + (1,) * (p.ndim - 1), dtype=p.dtype, device=p.device)
            mask[k] = 1
            handles.append(p.register_hook(lambda g, mask=mask: g * mask))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class FreshBatches:
    """Training data fn(step, generator): a batch of BATCH problems, fresh in every stage.

    The trainer seeds the generator by (seed, rank, step) and counts steps from 0 in every
    stage, so without the stage index all 48 stages would redraw the same few thousand
    problems (and the 6 M-parameter models overfit them). `stage` is set by fit_stages;
    batch (stage, step) is the same in a resumed run.
    """

    def __init__(self, problem: SparseProblem) -> None:
        self.problem, self.stage = problem, 0

    def __call__(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed(generator.initial_seed(), self.stage))
        b = self.problem.sample(BATCH, g)
        return b.x, b.s


def per_layer_nmse_db(model: nn.Module, batch: SparseBatch) -> list[float]:
    """NMSE dB of s_0 (= 0), s_1, ..., s_K on a batch: the per-layer curve of the benchmark."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        iterates = model(batch.x, return_all=True)
    model.train(was_training)
    return [round(nmse_db(s, batch.s), 4) for s in iterates]


@dataclass
class SparsePlan(Plan):
    """A Plan with the ALISTA to train first when the method starts from ALISTA (init "alista")."""

    pretrain: nn.Module | None = None
    pretrain_stages: tuple[Stage, ...] = ()


def method_stages(method: Method, steps: tuple[int, ...], layers: int, prefix: str = "") -> tuple[Stage, ...]:
    """The stages of `method` (see Method) for a network of `layers` layers."""
    if not method.layerwise:
        return tuple(LayerStage(name=f"{prefix}all-{i + 1}", lr=method.lrs[i], max_steps=steps[i],
                                layers=layers) for i in range(2) if steps[i] > 0)
    out: list[Stage] = []
    for t in range(1, layers + 1):
        out.append(LayerStage(name=f"{prefix}layer{t:02d}-new", lr=method.lrs[0], max_steps=steps[0],
                              layers=t, new_layer_only=True))
        out += [LayerStage(name=f"{prefix}layer{t:02d}-all{i}", lr=method.lrs[i], max_steps=steps[i],
                           layers=t) for i in (1, 2) if steps[i] > 0]
    return tuple(out)


def fit_method(trainer: Trainer, method: Method, stages: tuple[Stage, ...], data: FreshBatches,
               first_stage: int = 0) -> list[TrainResult]:
    """Train `stages` of `method`, growing the network a layer at a time when it is layerwise.

    `first_stage` numbers the stages for the data (FreshBatches.stage), so that every stage
    of a recipe, pre-training included, draws its own batches.
    """
    model = trainer.model
    total = model.n_layers if method.layerwise else None
    results = []
    for index, stage in enumerate(stages):
        data.stage = first_stage + index
        if total is not None:
            model.n_layers = stage.layers
        if stage.new_layer_only and method.warm_new_layer and stage.layers > 1:
            copy_previous_layer(model, stage.layers - 1, total)
        if stage.new_layer_only:
            with only_layer(model, stage.layers - 1, total):
                results.append(trainer.fit(stage))
        else:
            results.append(trainer.fit(stage))
    if total is not None:
        model.n_layers = total
    return results


INIT_CARD = {
    "model-based": "the model-based values (ISTA / ADMM at the architecture kwargs)",
    "tuned": "ADMM at the (rho, lam) of the validation grid (training.tuning), mu = 1",
    "alista": ("a trained ALISTA with the same support selection (stages 'pretrain-*', ALISTA's "
               "schedule), copied in by engines.imaging.ista.warm_start_from_alista"),
}


class SparseRecipe(Recipe):
    """One method at one noise setting on the standard benchmark (see the module docstring)."""

    seed = 0

    def __init__(self, method: str, suffix: str) -> None:
        self.method_name, self.method = method, METHODS[method]
        self.snr_db = NOISE[suffix]
        self.name = f"{method}-cs{suffix}"
        noise = "noiseless" if self.snr_db is None else f"SNR {self.snr_db:g} dB"
        self.description = f"{self.method.description}; 250 x 500 benchmark, {noise}"

    def steps(self, quick: bool, method: Method | None = None) -> tuple[int, ...]:
        """Steps of the stages of each layer (see Method)."""
        if quick:
            return (3, 2, 2)
        scale = 1.0 if self.snr_db is None else NOISY_STEPS[self.snr_db]
        return tuple(round(s * scale) for s in (method or self.method).steps)

    def stages(self, size: Size, quick: bool) -> tuple[Stage, ...]:
        return method_stages(self.method, self.steps(quick), size.layers)

    def _pretrain(self, H: torch.Tensor, size: Size,
                  quick: bool) -> tuple[nn.Module | None, tuple[Stage, ...]]:
        """The ALISTA to train first (init "alista") and its stages, or (None, ())."""
        if self.method.init != "alista":
            return None, ()
        kwargs = self.method.kwargs
        support = SupportSelection(**kwargs["support"]) if kwargs.get("support") else None
        alista = ALISTA(H, n_layers=size.layers, rho=kwargs["rho"], support=support)
        method = METHODS["alista"]
        return alista, method_stages(method, self.steps(quick, method), size.layers, prefix="pretrain-")

    def build(self, quick: bool) -> SparsePlan:
        size = QUICK if quick else FULL
        problem = SparseProblem.standard(seed=H_SEED, snr_db=self.snr_db, m=size.m, n=size.n,
                                         dtype=torch.float32)
        val = problem.sample(size.val, torch.Generator().manual_seed(VAL_SEED))
        test = problem.sample(size.test, torch.Generator().manual_seed(TEST_SEED))
        depth = {"n_iter" if self.method_name == "learned-admm" else "n_layers": size.layers}
        kwargs = {**depth, **self.method.kwargs}
        tuning = None
        if self.method.init == "tuned":
            tuning = tune_admm(problem.H, val, size.layers)
            kwargs.update(rho=tuning["rho"], lam=tuning["lam"])
        model = build_sparse_model(self.method.arch, problem.H, **kwargs)
        pretrain, pretrain_stages = self._pretrain(problem.H, size, quick)

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            curve = per_layer_nmse_db(trainer.model, test)
            return {"test_nmse_db": curve[-1], "test_nmse_db_per_layer": curve, "test_problems": size.test,
                    "test_seed": TEST_SEED}

        stages = self.stages(size, quick)
        noise = "none" if self.snr_db is None else f"SNR {self.snr_db:g} dB, std = std(H s) 10^(-SNR/20)"
        card = {
            "task": "sparse-coding",
            "family": ARCHITECTURES[self.method.arch].family,
            "description": self.description,
            "architecture": {"name": self.method.arch, "kwargs": kwargs},
            "problem": {"m": size.m, "n": size.n, "H": f"sensing_matrix({size.m}, {size.n}, seed={H_SEED})",
                        "H_seed": H_SEED, "p": P, "snr_db": self.snr_db,
                        "stored_as": f"{OPERATOR_KEY!r} in weights.safetensors (float32)"},
            "input": {"shape": ["N", size.m], "dtype": "float32", "normalization": "none",
                      "meaning": "observations x = H s + w"},
            "output": {"shape": ["N", size.n], "dtype": "float32", "meaning": "sparse codes s"},
            "training": {
                "data": (f"x = H s + w, s Bernoulli({P})-N(0, 1), noise {noise}; batches of {BATCH} drawn on "
                         f"the fly; validation: {size.val} fixed problems (seed {VAL_SEED}); held-out test: "
                         f"{size.test} problems (seed {TEST_SEED})"),
                "loss": "MSE of the last layer's code", "validation_metric": "NMSE dB",
                "init": INIT_CARD[self.method.init],
                "schedule": ("stage-wise: per layer t the new layer alone at lrs[0], then layers 1..t at "
                             "lrs[1], lrs[2]" if self.method.layerwise
                             else "all parameters at lrs[0], then lrs[1]"),
                "lrs": list(self.method.lrs),
                "new_layer_init": ("the previous layer's parameters" if self.method.warm_new_layer
                                   else "the initial values (see init)"),
                "steps_per_stage": list(self.steps(quick)),
                "total_steps": sum(s.max_steps for s in pretrain_stages + stages),
                "validated_every": EVAL_EVERY,
                **({"tuning": {"rho_grid": ADMM_RHO_GRID, "lam_grid": ADMM_LAM_GRID, "mu": 1.0,
                               "chosen": tuning}} if tuning else {}),
            },
        }
        return SparsePlan(
            model=model, loss_fn=F.mse_loss, train_data=FreshBatches(problem), val_data=(val.x, val.s),
            config=TrainConfig(lr=self.method.lrs[0], max_steps=1, batch_size=1000, eval_every=EVAL_EVERY,
                               device="cpu"),
            evaluate=evaluate, card=card, stages=stages,
            metric_fn=nmse_db, extra_tensors={OPERATOR_KEY: problem.H},
            pretrain=pretrain, pretrain_stages=pretrain_stages,
        )

    def fit_stages(self, trainer: Trainer, plan: Plan) -> list[TrainResult]:
        """Train the ALISTA first if the method starts from it, then the method's own stages."""
        results: list[TrainResult] = []
        if isinstance(plan, SparsePlan) and plan.pretrain is not None:
            with Trainer(plan.pretrain, plan.loss_fn, plan.train_data, plan.val_data, trainer.config,
                         plan.metric_fn, quiet=trainer.quiet) as pre:
                results += fit_method(pre, METHODS["alista"], plan.pretrain_stages, plan.train_data)
            warm_start_from_alista(trainer.model, plan.pretrain)
        return results + fit_method(trainer, self.method, plan.stages, plan.train_data,
                                    first_stage=len(plan.pretrain_stages))


RECIPES = tuple(SparseRecipe(method, suffix) for suffix in NOISE for method in METHODS)
SHIPPED = ("lista-cs", "lista-cpss-cs", "alista-cs", "learned-admm-cs", "unfolded-admm-cs")
