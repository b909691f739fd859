"""Training recipes: each produces one model artifact with one command (`mbdl train NAME`).

A recipe's `build(quick)` returns a `Plan` (model, data, loss, config, stages, held-out
evaluation, static card fields); the shared `Recipe.run` trains it with the Trainer and
writes the artifact folder (weights.safetensors + card.json), then exports model.onnx
into it when the artifact's task has an engine (engines/export.py), so every
trained model also runs on ONNX Runtime and TensorRT. Recipes are registered
as "module:attribute" and imported on first use, so listing them imports none.
"""

from __future__ import annotations

import importlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from engines.export import export_artifact, exportable
from mbdl_app.training.artifact import Artifact, read_artifact, write_artifact
from mbdl_app.training.errors import TrainingError, UnknownRecipeError
from mbdl_app.training.seeding import seed_everything
from mbdl_app.training.trainer import Stage, TrainConfig, Trainer, TrainResult

__all__ = ["Artifact", "Plan", "Recipe", "available_recipes", "get_recipe", "read_artifact",
           "register_recipe", "write_artifact"]


@dataclass
class Plan:
    """What a recipe trains and how.

    `evaluate(trainer)` returns the held-out metrics for the card (after training; e.g.
    `{"test_nmse_db": trainer.evaluate(test_set)}`). `card` holds the card fields the
    recipe knows: task, family, architecture, input, output, and `training.data` (a
    description of the data); `run` fills in name, the rest of training, and metrics.
    `extra_tensors` are stored in weights.safetensors beside the state dict (e.g. the
    sensing matrix of a sparse-coding model).
    """

    model: nn.Module
    loss_fn: Callable[[Any, Any], Any]
    train_data: Any
    val_data: Any
    config: TrainConfig
    evaluate: Callable[[Trainer], dict[str, float]]
    card: dict[str, Any]
    stages: tuple[Stage, ...] = (Stage(),)
    metric_fn: Callable[[Any, Any], Any] | None = None
    extra_tensors: dict[str, Any] = field(default_factory=dict)


class Recipe(ABC):
    """A named way to train one artifact. Subclasses set `name`, `description`, `seed` and
    implement `build`; a recipe whose stages change the model between fits (e.g. adding a
    layer) overrides `fit_stages`."""

    name: str
    description: str
    seed: int = 0

    @abstractmethod
    def build(self, quick: bool) -> Plan:
        """The plan; `quick` = a small version for tests and smoke runs (seconds, not hours).
        Called right after `seed_everything(self.seed)`."""

    def fit_stages(self, trainer: Trainer, plan: Plan) -> list[TrainResult]:
        """Train the plan's stages in order."""
        return [trainer.fit(stage) for stage in plan.stages]

    def run(self, out_dir: str | Path, quick: bool = False, *, checkpoint_dir: str | Path | None = None,
            resume: bool = False, quiet: bool = False) -> Path:
        """Train and write the artifact to `out_dir/<name>/`; returns that folder.

        `self.seed` seeds the build (model init, data) and the trainer. With `checkpoint_dir`,
        each stage checkpoints there and `resume` continues an interrupted run. Under
        torchrun every rank trains; rank 0 writes the artifact.
        """
        seed_everything(self.seed)
        plan = self.build(quick)
        config = plan.config.model_copy(update={
            "seed": self.seed, "resume": resume,
            "checkpoint_dir": None if checkpoint_dir is None else Path(checkpoint_dir)})
        target = Path(out_dir) / self.name
        start = time.time()
        with Trainer(plan.model, plan.loss_fn, plan.train_data, plan.val_data, config, plan.metric_fn,
                     quiet=quiet) as trainer:
            results = self.fit_stages(trainer, plan)
            metrics = plan.evaluate(trainer)
            if not trainer.ranks.is_main:
                return target
            training = {
                **plan.card.get("training", {}),
                "recipe": self.name, "quick": quick, "seed": self.seed,
                "config": config.model_dump(mode="json", exclude={"checkpoint_dir", "resume", "device"}),
                "stages": [{"name": r.stage, "steps": r.steps, "best_metric": r.best_metric,
                            "best_step": r.best_step, "stopped_early": r.stopped_early,
                            "wall_time_s": round(r.wall_time, 3)} for r in results],
                "wall_time_s": round(time.time() - start, 3),
                "device": str(trainer.device), "world_size": trainer.ranks.world_size,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            card = {**plan.card, "name": self.name, "training": training, "metrics": metrics}
            folder = write_artifact(target, trainer.model, card, extra=plan.extra_tensors)
            if exportable(folder):  # model.onnx for the ONNX Runtime / TensorRT backends
                export_artifact(folder)
            return folder


_RECIPES: dict[str, str | Recipe] = {
    "demo-linear": "mbdl_app.training.recipes.demo_linear:RECIPE",
    "learned-covariance": "mbdl_app.training.recipes.learned_covariance:RECIPE",
}


def register_recipe(name: str, recipe: Recipe | str) -> None:
    """Add a recipe: an instance, or "module:attribute" naming one (imported on first use)."""
    _RECIPES[name] = recipe


def available_recipes() -> list[str]:
    """Names `get_recipe` accepts."""
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """The recipe registered as `name`; UnknownRecipeError listing the known ones otherwise."""
    entry = _RECIPES.get(name)
    if entry is None:
        raise UnknownRecipeError(f"unknown recipe {name!r}; available: {', '.join(available_recipes())}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        _RECIPES[name] = entry
    if entry.name != name:
        raise TrainingError(f"recipe registered as {name!r} calls itself {entry.name!r}")
    return entry


def _register_sparse() -> None:
    from mbdl_app.training.recipes.sparse import RECIPES

    for recipe in RECIPES:
        register_recipe(recipe.name, recipe)


def _register_tracking() -> None:
    from mbdl_app.training.recipes.tracking import RECIPES

    for recipe in RECIPES:
        register_recipe(recipe.name, recipe)


def _register_ceus() -> None:
    from mbdl_app.training.recipes.ceus import RECIPES

    for recipe in RECIPES:
        register_recipe(recipe.name, recipe)


def _register_ulm() -> None:
    from mbdl_app.training.recipes.ulm import RECIPES
    from mbdl_app.training.recipes.ulm_chained import RECIPES as CHAINED

    for recipe in (*RECIPES, *CHAINED):
        register_recipe(recipe.name, recipe)


def _register_deep_storm() -> None:
    from mbdl_app.training.recipes.deep_storm import RECIPES

    for recipe in RECIPES:
        register_recipe(recipe.name, recipe)


def _register_lsparcom() -> None:
    from mbdl_app.training.recipes.lsparcom import RECIPES

    for recipe in RECIPES:
        register_recipe(recipe.name, recipe)


def _register_comms() -> None:
    from mbdl_app.training.recipes.comms import RECIPES

    for recipe in RECIPES:
        register_recipe(recipe.name, recipe)


_register_sparse()
_register_tracking()
_register_ceus()
_register_ulm()
_register_deep_storm()
_register_lsparcom()
_register_comms()
register_recipe("corona-fast", "mbdl_app.training.recipes.corona_fast:RECIPE")
register_recipe("corona-lite", "mbdl_app.training.recipes.corona_fast:LITE")
register_recipe("corona-mc", "mbdl_app.training.recipes.corona_mc:RECIPE")
register_recipe("dncnn", "mbdl_app.training.recipes.dncnn:RECIPE")
register_recipe("vae-digits", "mbdl_app.training.recipes.vae_digits:RECIPE")
register_recipe("kalmannet-cv", "mbdl_app.training.recipes.control:RECIPE")
register_recipe("kalmannet-lorenz-ft", "mbdl_app.training.recipes.tracking_finetune:FT")
register_recipe("kalmannet-lorenz-drop", "mbdl_app.training.recipes.tracking_finetune:DROP")
