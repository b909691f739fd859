"""The shared trainer every training recipe uses.

`Trainer(model, loss_fn, train_data, val_data, config).fit(stage)` runs one training stage:
Adam/AdamW over the stage's parameters with an lr schedule, gradient clipping, periodic
validation with early stopping and best-weights restore, checkpoints that resume exactly,
truncated BPTT for recurrent models, and data parallelism when launched by torchrun.

Stage-wise training (e.g. LISTA's: the new layer at lr 5e-4, then all layers at 1e-4 and
1e-5; ANCHORS.md) is a sequence of `fit(Stage(...))` calls on the same trainer; each stage
gets a fresh optimizer over the parameters it selects, all others being frozen for it.

Conventions: a batch is `(inputs, target)`; the model is called as `model(inputs)` (or
`model(*inputs)` for a tuple) and `loss_fn(pred, target)` returns a scalar tensor, the mean
over the batch (so that data parallelism, which averages gradients over ranks, trains
exactly as one process on the whole batch). A model with `init_state` is recurrent
(see `bptt.py`): inputs and targets are `(N, T, ...)` sequences. The validation metric is
`metric_fn(pred, target)` over the whole validation set (default: loss_fn); lower is better.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mbdl_app.training import distributed as D
from mbdl_app.training.bptt import ChunkRunner, is_recurrent, rollout, truncated_bptt
from mbdl_app.training.checkpoint import load_checkpoint, save_checkpoint
from mbdl_app.training.data import TensorData, as_train_data, as_val_data, concat, map_tensors
from mbdl_app.training.errors import TrainingError
from mbdl_app.training.progress import progress_bar
from mbdl_app.training.schedules import Constant, Schedule, lr_scheduler
from mbdl_app.training.seeding import rng_state, seed_everything, set_rng_state, stage_seed

logger = logging.getLogger(__name__)

# config fields a checkpoint may be resumed under with a different value
_RESUMABLE_CHANGES = {"device", "resume", "checkpoint_dir", "checkpoint_every"}


class TrainConfig(BaseModel):
    """How to train: optimizer, schedule, length, validation, checkpoints, device.

    Exactly one of `max_steps` / `epochs` (epochs need a fixed dataset). A step is one
    batch (for a recurrent model: one update per `bptt_chunk` of the batch's sequences).
    `batch_size` is the global batch of a fixed dataset (split evenly over data-parallel
    ranks) and the chunk size of evaluation; generated data decide their own batch size.
    `patience` counts validations without improvement before stopping early (None: never).
    With `checkpoint_dir`, a checkpoint is written every `checkpoint_every` steps and at the
    end of each stage; `resume` continues from it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Schedule = Constant()
    grad_clip: PositiveFloat | None = None
    max_steps: PositiveInt | None = None
    epochs: PositiveInt | None = None
    batch_size: PositiveInt = 64
    eval_every: PositiveInt = 100
    patience: PositiveInt | None = None
    seed: int = 0
    deterministic: bool = False
    bptt_chunk: PositiveInt | None = None
    checkpoint_dir: Path | None = None
    checkpoint_every: PositiveInt = 500
    resume: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _one_length(self) -> TrainConfig:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set exactly one of max_steps and epochs")
        return self


ParamSelector = Callable[[nn.Module], Iterable[Any]]


@dataclass(frozen=True)
class Stage:
    """One stage of training: these parameters, at this lr, for at most this long.

    `params(model)` returns the parameters to train, or optimizer param-group dicts
    (`{"params": ..., "lr": ...}`) for several lrs at once; None trains every parameter
    that requires grad. The other fields, when set, override the trainer's config for
    this stage. `name` names the stage's checkpoint file. Under data parallelism the model's
    forward must use every parameter the stage trains (DDP's rule): leave parts of the model
    a stage does not run (e.g. layers not added yet) out of `params`.
    """

    name: str = "train"
    params: ParamSelector | None = None
    lr: float | None = None
    max_steps: int | None = None
    epochs: int | None = None
    patience: int | None = None
    schedule: Schedule | None = None

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise TrainingError(f"stage name {self.name!r}: use letters, digits, '_', '.', '-'")

    def resolve(self, config: TrainConfig) -> TrainConfig:
        """`config` with this stage's overrides."""
        update = {k: getattr(self, k) for k in ("lr", "patience", "schedule") if getattr(self, k) is not None}
        if self.max_steps is not None or self.epochs is not None:
            update.update(max_steps=self.max_steps, epochs=self.epochs)
        try:
            return TrainConfig.model_validate({**config.model_dump(), **update})
        except ValueError as e:
            raise TrainingError(f"stage {self.name!r}: invalid overrides {update}: {e}") from None


class HistoryPoint(NamedTuple):
    """One validation point: the mean training loss since the previous one, the val metric."""

    step: int
    train_loss: float
    val_metric: float | None


@dataclass(frozen=True)
class TrainResult:
    """What one `fit` did. `best_metric`/`best_step` are None without validation data."""

    stage: str
    best_metric: float | None
    best_step: int | None
    steps: int
    wall_time: float
    history: tuple[HistoryPoint, ...]
    stopped_early: bool


@dataclass(frozen=True)
class StepEvent:
    """Passed to the trainer's `log` callback after every step (rank 0 only).

    `lr` is the lr this step used (first param group); `grad_norm` the total gradient norm
    before clipping (None without clipping); `val_metric` is set on validation steps.
    """

    stage: str
    step: int
    total: int
    train_loss: float
    lr: float
    grad_norm: float | None
    val_metric: float | None
    best_metric: float | None
    elapsed: float


@dataclass
class _Run:
    """The mutable state of one fit; everything a checkpoint must hold to resume exactly."""

    step: int = 0
    best: float = math.inf
    best_step: int | None = None
    best_weights: dict[str, torch.Tensor] | None = None
    bad: int = 0
    history: list[HistoryPoint] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_count: int = 0
    elapsed: float = 0.0
    stopped_early: bool = False
    done: bool = False


def _resolve_device(name: str, ranks: D.Ranks) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device 'cuda' requested but CUDA is not available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ranks.local_rank) if ranks.parallel else torch.device("cuda")


class Trainer:
    """Trains `model` on `train_data`, validating on `val_data`, as `config` says.

    `train_data`: an `(inputs, target)` pair of tensors (a fixed dataset, reshuffled every
    epoch) or `fn(step, generator) -> (inputs, target)` (generated on the fly); see data.py.
    `val_data`: an `(inputs, target)` pair or None. `log(StepEvent)` is called after every
    step on rank 0. `quiet` hides the progress bar (it shows only on a terminal anyway).

    Under torchrun the trainer joins the process group (unless the caller already did),
    wraps the model in DistributedDataParallel and shards the data; `close()` (or leaving
    a `with Trainer(...)` block) leaves the group it joined.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], train_data: Any,
                 val_data: Any, config: TrainConfig, metric_fn: Callable[[Any, Any], Any] | None = None,
                 log: Callable[[StepEvent], None] | None = None, quiet: bool = False):
        self.config = config
        self.ranks = D.torchrun_ranks()
        self.train_data = as_train_data(train_data)
        self.val_data = None if val_data is None else as_val_data(val_data)
        self.recurrent = is_recurrent(model)
        if config.bptt_chunk is not None and not self.recurrent:
            raise TrainingError(f"bptt_chunk is set but {type(model).__name__} has no init_state "
                                "(see mbdl_app/training/bptt.py for the recurrent contract)")
        if isinstance(self.train_data, TensorData) and config.batch_size % self.ranks.world_size:
            raise TrainingError(f"batch_size {config.batch_size} does not split evenly over "
                                f"{self.ranks.world_size} ranks")
        self.loss_fn = loss_fn
        self.metric_fn = metric_fn or loss_fn
        self.log, self.quiet = log, quiet
        self.device = _resolve_device(config.device, self.ranks)
        self._owns_group = D.init_process_group(self.ranks, self.device)
        self.model = model.to(self.device)

    def close(self) -> None:
        """Leave the process group if this trainer joined it, after every rank got here: a rank
        tearing gloo down while another still talks to it can abort the process at exit
        ("terminate called without an active exception", seen once under load in CI)."""
        if self._owns_group and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()
        self._owns_group = False

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one stage ---------------------------------------------------------------------

    def fit(self, stage: Stage | None = None) -> TrainResult:
        """Train one stage; on return the model holds its best validated weights.

        With `config.resume` and a checkpoint of this stage in `checkpoint_dir`, continue from
        it (a finished stage is not trained again: its weights are loaded and its result
        returned). Raises TrainingError on a non-finite training loss or a checkpoint that
        does not match this run.
        """
        stage = stage or Stage()
        cfg = stage.resolve(self.config)
        groups = self._param_groups(stage)
        trained = {id(p) for g in groups for p in g["params"]}
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        for p, _ in flags:
            p.requires_grad_(id(p) in trained)
        try:
            return self._fit(stage, cfg, groups)
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    def _total_steps(self, cfg: TrainConfig) -> int:
        if cfg.max_steps is not None:
            return cfg.max_steps
        per_epoch = self.train_data.steps_per_epoch(cfg.batch_size)
        if per_epoch is None:
            raise TrainingError("epochs need a fixed dataset; for generated data set max_steps")
        return cfg.epochs * per_epoch

    def _param_groups(self, stage: Stage) -> list[dict[str, Any]]:
        if stage.params is None:
            groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        else:
            items = list(stage.params(self.model))
            if all(isinstance(g, dict) for g in items):
                groups = [{**g, "params": list(g["params"])} for g in items]
            elif not any(isinstance(g, dict) for g in items):
                groups = [{"params": items}]
            else:
                raise TrainingError(f"stage {stage.name!r}: params mixes tensors and param-group dicts")
        if not any(g["params"] for g in groups):
            raise TrainingError(f"stage {stage.name!r} selects no parameters to train")
        return groups

    def _wrap(self) -> nn.Module:
        net = ChunkRunner(self.model) if self.recurrent else self.model
        if not self.ranks.parallel:
            return net
        # a learned initial state is used by the first chunk of a sequence only
        return DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda"
                                       else None, find_unused_parameters=self.recurrent)

    def _fit(self, stage: Stage, cfg: TrainConfig, groups: list[dict[str, Any]]) -> TrainResult:
        total = self._total_steps(cfg)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = lr_scheduler(opt, cfg.schedule, total)
        net = self._wrap()
        path = None if cfg.checkpoint_dir is None else Path(cfg.checkpoint_dir) / f"{stage.name}.pt"
        run = _Run()
        if cfg.resume and path is not None and path.exists():
            self._restore(path, cfg, opt, sched, run)
            if run.done:
                return self._result(stage, run)
        else:
            seed_everything(cfg.seed + self.ranks.rank, cfg.deterministic)
            if self.val_data is not None:
                metric = self.evaluate()
                run.history.append(HistoryPoint(0, math.nan, metric))
                self._consider(run, metric, cfg)
        data_seed = stage_seed(cfg.seed, stage.name)  # each stage its own batches
        start = time.monotonic() - run.elapsed
        self.model.train()
        with progress_bar(self.ranks.is_main and not self.quiet) as bar:
            task = bar.add_task(stage.name, total=total, completed=run.step, loss=math.nan, val="-")
            while run.step < total and not run.stopped_early:
                batch = self.train_data.batch(run.step, cfg.batch_size, data_seed, self.ranks.rank,
                                              self.ranks.world_size)
                inputs, target = map_tensors(lambda t: t.to(self.device, non_blocking=True), batch)
                lr = opt.param_groups[0]["lr"]
                loss, grad_norm = self._train_step(net, opt, cfg, inputs, target)
                sched.step()
                run.step += 1
                run.loss_sum += loss
                run.loss_count += 1
                metric = None
                if run.step % cfg.eval_every == 0 or run.step == total:
                    metric = self._validation_point(stage, cfg, run)
                run.elapsed = time.monotonic() - start
                if (path is not None and run.step % cfg.checkpoint_every == 0 and run.step < total
                        and not run.stopped_early):
                    self._save(path, cfg, opt, sched, run)
                if self.ranks.is_main:
                    best = None if math.isinf(run.best) else run.best
                    bar.update(task, completed=run.step, loss=loss,
                               val="-" if best is None else f"{best:.4g}")
                    if self.log is not None:
                        self.log(StepEvent(stage.name, run.step, total, loss, lr, grad_norm, metric, best,
                                           run.elapsed))
        if run.best_weights is not None:
            self.model.load_state_dict(run.best_weights)
        opt.zero_grad(set_to_none=True)
        run.elapsed = time.monotonic() - start
        run.done = True
        if path is not None:
            self._save(path, cfg, opt, sched, run)
        if self.ranks.is_main and run.stopped_early:
            logger.info("stage %s: stopped early at step %d, best %.4g at step %s",
                        stage.name, run.step, run.best, run.best_step)
        return self._result(stage, run)

    def _train_step(self, net: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig,
                    inputs: Any, target: Any) -> tuple[float, float | None]:
        params = [p for g in opt.param_groups for p in g["params"]]
        norms: list[float] = []

        def update(loss: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                norms.append(float(nn.utils.clip_grad_norm_(params, cfg.grad_clip)))
            opt.step()

        if self.recurrent:
            chunk = cfg.bptt_chunk or inputs.shape[1]
            loss = truncated_bptt(net, inputs, target, self.loss_fn, chunk, update)
        else:
            pred = net(*inputs) if isinstance(inputs, tuple) else net(inputs)
            batch_loss = self.loss_fn(pred, target)
            update(batch_loss)
            loss = float(batch_loss.detach())
        return loss, max(norms) if norms else None

    def _validation_point(self, stage: Stage, cfg: TrainConfig, run: _Run) -> float | None:
        loss = run.loss_sum / run.loss_count
        if self.ranks.parallel:
            loss = D.all_mean(loss, self.device)
        if not math.isfinite(loss):
            raise TrainingError(f"stage {stage.name!r}: training loss is {loss} by step {run.step} "
                                "(lower the lr or set grad_clip)")
        run.loss_sum, run.loss_count = 0.0, 0
        metric = None if self.val_data is None else self.evaluate()
        run.history.append(HistoryPoint(run.step, loss, metric))
        if metric is not None:
            self._consider(run, metric, cfg)
        if self.ranks.is_main:
            logger.info("stage %s step %d: train loss %.4g, val %s", stage.name, run.step, loss,
                        "-" if metric is None else f"{metric:.4g}")
        return metric

    def _consider(self, run: _Run, metric: float, cfg: TrainConfig) -> None:
        if metric < run.best:
            run.best, run.best_step, run.bad = metric, run.step, 0
            run.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            return
        run.bad += 1
        run.stopped_early = cfg.patience is not None and run.bad >= cfg.patience

    @torch.no_grad()
    def evaluate(self, data: Any = None) -> float:
        """`metric_fn` of the model's predictions over `data` (default: the validation set).

        Predictions are made in eval mode, in chunks of `batch_size`, then concatenated, so
        the metric sees the whole set at once. Under data parallelism every rank must call
        this; all get rank 0's value.
        """
        data = self.val_data if data is None else as_val_data(data)
        if data is None:
            raise TrainingError("no validation data to evaluate on")
        was_training = self.model.training
        self.model.eval()
        preds, targets = [], []
        for inputs, target in data.in_order(self.config.batch_size):
            inputs = map_tensors(lambda t: t.to(self.device), inputs)
            if self.recurrent:
                preds.append(rollout(self.model, inputs))
            else:
                preds.append(self.model(*inputs) if isinstance(inputs, tuple) else self.model(inputs))
            targets.append(map_tensors(lambda t: t.to(self.device), target))
        self.model.train(was_training)
        metric = float(self.metric_fn(concat(preds), concat(targets)))
        return D.broadcast_float(metric, self.device) if self.ranks.parallel else metric

    # -- checkpoints -------------------------------------------------------------------

    def _config_key(self, cfg: TrainConfig) -> dict[str, Any]:
        return cfg.model_dump(mode="json", exclude=_RESUMABLE_CHANGES)

    def _save(self, path: Path, cfg: TrainConfig, opt: torch.optim.Optimizer, sched: Any, run: _Run) -> None:
        own = {**rng_state(self.device), "loss_sum": torch.tensor([run.loss_sum], dtype=torch.float64)}
        per_rank = D.all_gather_tensors(own, self.device) if self.ranks.parallel else [own]
        if not self.ranks.is_main:
            return
        save_checkpoint(path, {
            "config": self._config_key(cfg),
            "world_size": self.ranks.world_size,
            "step": run.step,
            "done": run.done,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "best_metric": run.best,
            "best_step": run.best_step,
            "best_weights": run.best_weights or {},
            "bad_evals": run.bad,
            "history": [[h.step, h.train_loss, math.nan if h.val_metric is None else h.val_metric]
                        for h in run.history],
            "loss_count": run.loss_count,
            "elapsed": run.elapsed,
            "stopped_early": run.stopped_early,
            "ranks": per_rank,
        })

    def _restore(self, path: Path, cfg: TrainConfig, opt: torch.optim.Optimizer, sched: Any,
                 run: _Run) -> None:
        ckpt = load_checkpoint(path, self.device)
        ours, theirs = self._config_key(cfg), ckpt["config"]
        changed = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
        if changed:
            raise TrainingError(f"{path}: written by a run with different {', '.join(changed)}; "
                                "resume with the same config or remove the checkpoint")
        if ckpt["world_size"] != self.ranks.world_size:
            raise TrainingError(f"{path}: written by {ckpt['world_size']} process(es), resuming with "
                                f"{self.ranks.world_size}")
        self.model.load_state_dict(ckpt["model"])
        try:
            opt.load_state_dict(ckpt["optimizer"])
        except ValueError as e:
            raise TrainingError(f"{path}: optimizer state does not fit this stage's parameters: "
                                f"{e}") from None
        sched.load_state_dict(ckpt["scheduler"])
        mine = ckpt["ranks"][self.ranks.rank]
        set_rng_state(mine, self.device)
        run.step, run.done, run.stopped_early = ckpt["step"], ckpt["done"], ckpt["stopped_early"]
        run.best, run.best_step, run.bad = ckpt["best_metric"], ckpt["best_step"], ckpt["bad_evals"]
        run.best_weights = ckpt["best_weights"] or None
        run.history = [HistoryPoint(int(s), float(loss), None if math.isnan(m) else float(m))
                       for s, loss, m in ckpt["history"]]
        run.loss_sum, run.loss_count = float(mine["loss_sum"][0]), ckpt["loss_count"]
        run.elapsed = ckpt["elapsed"]
        if self.ranks.is_main:
            logger.info("resumed %s at step %d", path, run.step)

    def _result(self, stage: Stage, run: _Run) -> TrainResult:
        return TrainResult(stage.name, None if math.isinf(run.best) else run.best, run.best_step, run.step,
                           run.elapsed, tuple(run.history), run.stopped_early)
