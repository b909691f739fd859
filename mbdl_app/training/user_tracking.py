"""`mbdl train kalmannet --data FILE`: a learned tracker trained on a user's own trajectories.

File (NPZ, or HDF5 .h5/.hdf5): `x` (N, T, n) true states and `y` (N, T, m) observations,
float; optional `x0` (N, n), the state before y's first sample, from which each sequence's
tracker starts (without it every track starts at the model's prior x0). A non-finite row
of y is a missing observation: the tracker predicts through it (as every runtime does,
engines/tracking/gating.py); x must be finite.

The state-space model the tracker assumes (its f and h; KalmanNet learns the gain) is
named with `--model`: one of MODELS (the recipes' settings, recipes/tracking.py), with
optional overrides NAME:key=value,... (e.g. `lorenz:dt=0.01,r2=0.5`); its n and m must
match the file's.

Training: the last VAL_FRAC of the sequences (a seeded shuffle) are held out for
validation; Adam (lr 1e-3, weight decay 1e-4), gradient norm clipped at 1, truncated BPTT
over chunks of `chunk` steps, `epochs` passes over the training sequences in batches,
validation MSE (dB) after every epoch, a progress bar on a terminal. Written to
OUT/NAME/: the artifact (card.json, weights.safetensors, model.onnx) of the best
validation epoch, rewritten whenever validation improves (model.onnx exported at the end),
and OUT/NAME.last_good.pt, the weights at the end of the last epoch (a checkpoint,
mbdl_app/training/checkpoint.py). A non-finite training loss (or weights) stops training
with one line naming the file, epoch and batch; last_good.pt then holds the weights from before that batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mbdl_app.training.errors import TrainingError
from mbdl_app.training.progress import progress_bar

MODELS = ("lorenz", "lorenz-rot")
ARCHES = ("kalmannet", "gru-tracker", "model-based-rnn")
VAL_FRAC = 0.2


def parse_model(spec: str) -> tuple[dict[str, Any], tuple[float, ...]]:
    """(LorenzSSM parameters, prior x0) of `NAME[:key=value,...]`; TrainingError naming the bad part."""
    from mbdl_app.training.recipes.tracking import SETTINGS, X0

    name, _, over = spec.partition(":")
    if name not in MODELS:
        raise TrainingError(f"--model {spec!r}: unknown model {name!r}; known: {', '.join(MODELS)}")
    model = SETTINGS[name].model | {"q2": SETTINGS[name].model["q2"] or 0.0}
    for item in filter(None, over.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in model:
            raise TrainingError(f"--model {spec!r}: {item!r} is not key=value with key one of "
                                f"{', '.join(model)}")
        try:
            model[key] = type(model[key])(value) if key in ("obs",) else float(value)
        except ValueError:
            raise TrainingError(f"--model {spec!r}: {key}={value!r} is not a number") from None
    model["J"] = int(model["J"])
    return model, X0


def load_trajectories(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(x (N, T, n), y (N, T, m), x0 (N, n) or None) float64 from an NPZ or HDF5 file."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no such file")
    arrays: dict[str, np.ndarray] = {}
    try:
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as f:
                arrays = {k: np.asarray(f[k]) for k in ("x", "y", "x0") if k in f}
        else:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: np.asarray(f[k]) for k in ("x", "y", "x0") if k in f.files}
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: not a readable NPZ/HDF5 file ({e})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise TrainingError(f"{path}: no array {key!r} (need x (N, T, n) and y (N, T, m))")
    try:
        x, y = (arrays[k].astype(np.float64) for k in ("x", "y"))
        x0 = arrays["x0"].astype(np.float64) if "x0" in arrays else None
    except (TypeError, ValueError):
        raise TrainingError(f"{path}: x, y (and x0) must be numeric arrays") from None
    if x.ndim != 3 or y.ndim != 3 or x.shape[:2] != y.shape[:2]:
        raise TrainingError(f"{path}: x and y must be (N, T, n) and (N, T, m) with the same N, T; "
                            f"got x {x.shape}, y {y.shape}")
    if x0 is not None and x0.shape != (x.shape[0], x.shape[2]):
        raise TrainingError(f"{path}: x0 must be (N, n) = {(x.shape[0], x.shape[2])}, got {x0.shape}")
    if not np.isfinite(x).all() or (x0 is not None and not np.isfinite(x0).all()):
        bad = np.flatnonzero(~np.isfinite(x).all(axis=(1, 2)))
        raise TrainingError(f"{path}: x (the truth) has non-finite values"
                            + (f" in sequence(s) {bad[:5].tolist()}" if bad.size else " in x0"))
    return x, y, x0


def masked_step(module: nn.Module, state: tuple[Tensor, ...], y: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """The module's training step on y (N, m); rows with a non-finite y coast (the prediction)."""
    finite = torch.isfinite(y).all(-1)
    if bool(finite.all()):
        return module.step(state, y)
    nxt, x = module.step(state, torch.where(finite[:, None], y, torch.zeros_like(y)))
    coasted, *held = module.coast(*state)
    keep = finite[:, None]
    state = tuple(torch.where(keep, a, b) for a, b in zip(nxt, held, strict=True))
    return state, torch.where(keep, x, coasted)


def run_sequences(module: nn.Module, y: Tensor, z0: Tensor | None, state=None, start: int = 0,
                  stop: int | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Estimates (N, stop - start, n) of y[:, start:stop] from `state` (None: init at z0 / prior)."""
    if state is None:
        state = module.init_state(y.shape[0], z0)
    means = []
    for t in range(start, y.shape[1] if stop is None else stop):
        state, m = masked_step(module, state, y[:, t])
        means.append(m)
    return torch.stack(means, 1), state


def db(mse: float) -> float:
    return 10 * math.log10(mse) if mse > 0 else -math.inf


@dataclass
class UserTrainResult:
    folder: Path
    best_epoch: int
    best_val_db: float
    epochs_run: int


def train_on_file(arch: str, data: Path, *, model: str = "lorenz", out: Path, val_frac: float = VAL_FRAC,
                  epochs: int = 20, batch: int = 16, chunk: int = 50, lr: float = 1e-3, seed: int = 0,
                  quiet: bool = False, name: str | None = None, ekf_reference: bool = True
                  ) -> UserTrainResult:
    """Train `arch` on the trajectories in `data`; see the module docstring. Returns where it wrote."""
    from engines.export import export_artifact, exportable
    from engines.tracking.learned import ARCHITECTURES, build_tracker_module
    from mbdl_app.training.artifact import write_artifact

    if arch not in ARCHES:
        raise TrainingError(f"--data trains a tracker architecture: one of {', '.join(ARCHES)}; got {arch!r}")
    if not 0 < val_frac < 1:
        raise TrainingError(f"--val-frac must be in (0, 1), got {val_frac}")
    if epochs < 1:
        raise TrainingError(f"--epochs must be >= 1, got {epochs}")
    data = Path(data)
    params, x0_prior = parse_model(model)
    x, y, x0 = load_trajectories(data)
    N, T, n = x.shape
    torch.manual_seed(seed)
    kwargs = {"arch": "arch2"} if arch == "kalmannet" else {}
    try:
        module = build_tracker_module(arch, params, x0_prior, **kwargs)
    except ValueError as e:
        raise TrainingError(f"--model {model!r}: {e}") from None
    if (n, y.shape[2]) != (module.n, module.m):
        raise TrainingError(f"{data}: x has n = {n}, y m = {y.shape[2]}; model {model!r} has n = {module.n}, "
                            f"m = {module.m}")
    n_val = int(round(val_frac * N))
    if n_val < 1 or N - n_val < 1:
        raise TrainingError(f"{data}: {N} sequence(s) cannot be split by --val-frac {val_frac} "
                            "(need >= 1 for training and >= 1 for validation)")
    order = np.random.default_rng(seed).permutation(N)
    tr, va = order[: N - n_val], order[N - n_val:]
    X, Y = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    Z = None if x0 is None else torch.from_numpy(x0).float()

    def validate() -> float:
        module.eval()
        with torch.no_grad():
            est, _ = run_sequences(module, Y[va], None if Z is None else Z[va])
        module.train()
        return float(torch.mean((est - X[va]) ** 2))

    name = name or f"{arch}-{data.stem}"
    target = Path(out) / name
    last_good = Path(out) / f"{name}.last_good.pt"
    last_good.parent.mkdir(parents=True, exist_ok=True)
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=1e-4)
    best, best_epoch, history = math.inf, 0, []
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(tr) / batch)
    start_time = time.monotonic()
    card_base = {
        "task": "tracking", "family": ARCHITECTURES[arch].family,
        "description": f"{arch} trained on {data.name} ({N} x {T} trajectories) with the {model!r} model",
        "architecture": {"name": arch, "kwargs": kwargs},
        "model": params, "x0": list(x0_prior),
        "input": {"shape": ["N", module.m], "dtype": "float32", "meaning": "observations y_t, one per step"},
        "output": {"shape": ["N", module.n], "dtype": "float32", "meaning": "x_{t|t}"},
    }
    module.train()
    with progress_bar(not quiet) as bar:
        task = bar.add_task(name, total=epochs * steps_per_epoch, loss=math.nan, val="-")
        for epoch in range(1, epochs + 1):
            perm = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
            for b in range(steps_per_epoch):
                good = {k: v.detach().clone() for k, v in module.state_dict().items()}
                idx = perm[b * batch:(b + 1) * batch]
                yb, xb, zb = Y[idx], X[idx], None if Z is None else Z[idx]
                state, losses = None, []
                for c0 in range(0, T, chunk):
                    est, state = run_sequences(module, yb, zb, state, c0, min(T, c0 + chunk))
                    loss = torch.mean((est - xb[:, c0:c0 + chunk]) ** 2)
                    if not torch.isfinite(loss):
                        _keep(last_good, good, epoch, b + 1, "before the batch whose loss was not finite")
                        best_note = f"; best (epoch {best_epoch}) in {target}" if best_epoch else ""
                        raise TrainingError(
                            f"{data}: training loss became {float(loss.detach())} in epoch {epoch}, batch "
                            f"{b + 1} (sequences {sorted(idx.tolist())[:5]}); last good weights kept in "
                            f"{last_good}{best_note}")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                    opt.step()
                    if not all(bool(torch.isfinite(q).all()) for q in module.parameters()):
                        _keep(last_good, good, epoch, b + 1, "before the batch that made weights non-finite")
                        raise TrainingError(f"{data}: weights became non-finite in epoch {epoch}, batch "
                                            f"{b + 1}; last good weights kept in {last_good}")
                    losses.append(float(loss.detach()))
                    state = tuple(s.detach() for s in state)
                bar.update(task, advance=1, loss=float(np.mean(losses)))
            val = validate()
            if not math.isfinite(val):
                raise TrainingError(f"{data}: validation MSE became {val} in epoch {epoch}; last good "
                                    f"weights kept in {last_good}")
            history.append({"epoch": epoch, "val_mse_db": round(db(val), 4)})
            _keep(last_good, module.state_dict(), epoch, steps_per_epoch, "end of epoch")
            if val < best:
                best, best_epoch = val, epoch
                metrics = {"val_mse_db": round(db(val), 4), "val_sequences": len(va), "val_T": T,
                           "best_epoch": epoch}
                if ekf_reference and arch == "kalmannet":
                    metrics["ekf"] = _ekf_db(params, x0_prior, y[va], x[va], None if x0 is None else x0[va])
                card = {**card_base, "name": name, "metrics": metrics, "training": {
                    "data": f"{data} ({N} x {T}; validation {len(va)} sequences, seeded shuffle {seed})",
                    "loss": "MSE of x_{t|t}", "validation_metric": "MSE dB",
                    "schedule": (f"Adam lr {lr:g}, weight decay 1e-4, grad norm clip 1, BPTT chunks of "
                                 f"{chunk}, batches of {batch}, {epochs} epochs, best validation epoch kept"),
                    "history": history, "wall_time_s": round(time.monotonic() - start_time, 3)}}
                (target / "model.onnx").unlink(missing_ok=True)  # stale until exported below
                write_artifact(target, module, card)
            bar.update(task, val=f"{db(best):.2f} dB")
    if exportable(target):  # the best epoch's model.onnx, once
        export_artifact(target)
    return UserTrainResult(target, best_epoch, round(db(best), 4), epochs)


def _keep(path: Path, weights: dict[str, Tensor], epoch: int, batch: int, when: str) -> None:
    """Write the last good weights (a plain checkpoint, save_checkpoint: atomic)."""
    from mbdl_app.training.checkpoint import save_checkpoint

    save_checkpoint(path, {"epoch": epoch, "batch": batch, "when": when, "model": weights})


def _ekf_db(params: dict[str, Any], x0_prior, y: np.ndarray, x: np.ndarray, z0: np.ndarray | None) -> float:
    """The EKF (the same model, q2 None for no process noise) on the validation sequences, MSE dB."""
    from engines.tracking.kalman import build_ekf

    ekf = build_ekf(**(params | {"q2": params["q2"] or None}), x0=tuple(x0_prior))
    ekf.reset(y.shape[0], z0)
    est = np.stack([ekf.step(y[:, t]).mean for t in range(y.shape[1])], 1)
    return round(db(float(np.mean((est - x) ** 2))), 4)
