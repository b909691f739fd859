"""On-device calibration: distill a slow model-based solver into a shipped unfolded network on
the user's own recording, without labels (`mbdl calibrate RECORDING --teacher rpca-fista
--student corona-ceus`).

The teacher (RPCA by FISTA, `engines.imaging.rpca.RobustPCA`) run for many iterations is the
target: its bubbles S of each window of the recording. The student (a shipped clutter-suppression
artifact: CORONA, the same RPCA step unfolded, seed Fig. 6) starts from its shipped weights and
is fine-tuned on MSE(S_student, S_teacher), the distillation of the solver the network was
derived from, on data from this probe, this patient, this geometry instead of the simulator's.

Windows are cut as the student was trained (mbdl_app/training/recipes/ceus.py): consecutive
blocks of T = the student's window frames of one I/Q frame stream, tiled into non-overlapping
patch x patch tiles (32 x 32). The blocks are split by time, never shuffled across the split:
the first 70 % train, the next 10 % validate (the trainer keeps the best validated weights,
the shipped ones included, so calibration cannot make the student worse on them), the last
20 % are held out. The card reports the held-out MSE against the teacher of the shipped and
the calibrated student (and, when the recording carries the simulator's truth, of both and of
the teacher against the truth: the student learns the teacher, errors included).

The result is an artifact folder like a shipped one (card.json, weights.safetensors,
model.onnx), loadable by path (`engines.load(PATH)`) and added to a running session beside
the shipped engine (`mbdl run/gui --calibrated PATH`, the GUI's Engines menu).
"""

from __future__ import annotations

import copy
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import engines
from drivers.errors import DriverError
from drivers.recording import RecordingReader
from engines.artifacts import CARD, sha256_of
from engines.errors import EngineError
from engines.export import export_artifact
from mbdl_app.training.artifact import write_artifact
from mbdl_app.training.errors import TrainingError
from mbdl_app.training.schedules import Cosine
from mbdl_app.training.trainer import TrainConfig, Trainer

TEACHERS = ("rpca-fista",)  # model-based clutter solvers (torch modules with `iterates`)
TASK = "clutter-suppression"
SPLIT = (0.7, 0.1, 0.2)  # train, validation, held out: fractions of the blocks, in time order
TEACHER_CHUNK = 4  # windows per call: RobustPCA keeps every iterate (~0.3 GB at 4 x 200 iterations)


@dataclass(frozen=True)
class CalibrationConfig:
    """How to calibrate. `max_windows` bounds the windows the teacher solves (it dominates the
    time: ~0.4 s a 32 x 32 x 20 window at 200 iterations on one core), spread evenly over each
    split; `epochs` passes over the training windows at `lr` (cosine decay to 2 %)."""

    teacher: str = "rpca-fista"
    student: str = "corona-ceus"
    teacher_iterations: int = 200
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-3
    max_windows: int | None = 400
    patch: int = 32
    stream: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS:
            raise TrainingError(f"--teacher {self.teacher!r}: unknown teacher; known: {', '.join(TEACHERS)}")
        for name in ("teacher_iterations", "epochs", "batch_size", "patch"):
            if getattr(self, name) < 1:
                raise TrainingError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_windows is not None and self.max_windows < 3:
            raise TrainingError(f"--max-windows must be >= 3 (train, validation, held out), "
                                f"got {self.max_windows}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError(f"lr must be > 0, got {self.lr}")


@dataclass
class Windows:
    """The recording's windows of one split: D (n, T, 2, p, p) and, from a simulator, the truth S."""

    D: torch.Tensor
    truth: torch.Tensor | None


@dataclass
class CalibrationResult:
    folder: Path
    card: dict[str, Any]


def default_out_dir(name: str) -> Path:
    """Where a calibrated artifact goes without --out: the user data folder."""
    return Path(platformdirs.user_data_dir("mbdl-studio", appauthor=False)) / "calibrated" / name


def _frame_stream(reader: RecordingReader, stream: str | None) -> str:
    """The I/Q frame stream to calibrate on: `stream`, or the only/first (2, H, W) frame stream."""
    infos = {s: reader.info(s) for s in reader.streams}
    iq = [s for s, i in infos.items() if i.kind == "frames" and len(i.shape) == 3 and i.shape[0] == 2]
    if stream is not None:
        if stream not in iq:
            raise TrainingError(f"{reader.path}: no I/Q frame stream {stream!r}; I/Q frame streams: "
                                f"{', '.join(iq) or 'none'}")
        return stream
    if not iq:
        raise TrainingError(f"{reader.path}: no I/Q frame stream (2, H, W) to calibrate a clutter filter on; "
                            f"streams: {', '.join(reader.streams) or 'none'}")
    return iq[0]


def _pick(n: int, k: int) -> list[int]:
    """k of range(n), evenly spread (all when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k).round()})


def split_blocks(n_blocks: int) -> tuple[range, range, range]:
    """Train, validation and held-out blocks, in time order (SPLIT; at least one each)."""
    if n_blocks < 3:
        raise TrainingError(f"need at least 3 blocks (train, validation, held out), got {n_blocks}")
    held = max(1, round(SPLIT[2] * n_blocks))
    val = max(1, round(SPLIT[1] * n_blocks))
    train = n_blocks - held - val
    if train < 1:
        train, val = 1, n_blocks - held - 1
    return range(0, train), range(train, train + val), range(train + val, n_blocks)


def recording_windows(path: Path, config: CalibrationConfig, window: int
                      ) -> tuple[dict[str, Windows], dict[str, Any]]:
    """The windows of each split (train, val, held_out) and what they came from.

    Reads only the frames of the blocks it uses (a minute of 128 x 128 frames is ~0.8 GB).
    """
    try:
        reader = RecordingReader(path)
    except DriverError as e:
        raise TrainingError(str(e)) from None
    with reader:
        stream = _frame_stream(reader, config.stream)
        info = reader.info(stream)
        _, H, W = info.shape
        p = min(config.patch, H, W)
        ny, nx = H // p, W // p
        tiles = ny * nx
        n_frames = reader.n_items(stream)
        n_blocks = n_frames // window
        if n_blocks < 3:
            raise TrainingError(f"{path}: stream {stream!r} has {n_frames} frames; calibration needs "
                                f"at least {3 * window} (3 blocks of {window}: train, validation, held out)")
        splits = dict(zip(("train", "val", "held_out"), split_blocks(n_blocks), strict=True))
        has_truth = "bubbles" in info.truth_shapes
        out, frames_used = {}, 0
        for name, blocks in splits.items():
            share = dict(zip(("train", "val", "held_out"), SPLIT, strict=True))[name]
            cap = None if config.max_windows is None else max(1, round(share * config.max_windows))
            # windows = (block, tile) pairs; a cap keeps evenly spread blocks, all tiles of each
            keep = (list(blocks) if cap is None
                    else [blocks[i] for i in _pick(len(blocks), math.ceil(cap / tiles))])
            D, S = [], []
            for b in keep:
                items = [reader.item(stream, b * window + k) for k in range(window)]
                D.append(_tile(np.stack([f.data for f in items]), p, ny, nx))
                if has_truth:
                    S.append(_tile(np.stack([f.truth["bubbles"] for f in items]), p, ny, nx))
                frames_used += window
            D_all = np.concatenate(D)
            pick = _pick(len(D_all), cap) if cap is not None else list(range(len(D_all)))
            out[name] = Windows(torch.from_numpy(D_all[pick]),
                                torch.from_numpy(np.concatenate(S)[pick]) if has_truth else None)
        source = {"path": str(Path(path).resolve()), "sha256": sha256_of(Path(path)), "stream": stream,
                  "uri": info.uri, "frame_shape": list(info.shape), "rate_hz": info.rate_hz,
                  "frames": n_frames, "frames_used": frames_used, "window": window, "patch": p,
                  "blocks": {k: [v.start, v.stop] for k, v in splits.items()}, "truth": has_truth}
    return out, source


def _tile(frames: np.ndarray, p: int, ny: int, nx: int) -> np.ndarray:
    """Frames (T, 2, H, W) -> their non-overlapping tiles (ny nx, T, 2, p, p), as recipes/ceus.py."""
    T = frames.shape[0]
    x = frames[:, :, : ny * p, : nx * p].reshape(T, 2, ny, p, nx, p)
    return np.ascontiguousarray(x.transpose(2, 4, 0, 1, 3, 5).reshape(ny * nx, T, 2, p, p), dtype=np.float32)


def _bar(quiet: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=console,
                    disable=quiet or not console.is_terminal)


@torch.no_grad()
def teacher_targets(module: torch.nn.Module, D: torch.Tensor, what: str, quiet: bool) -> torch.Tensor:
    """The teacher's bubbles S of every window (in chunks, with a progress bar)."""
    out = []
    with _bar(quiet) as bar:
        task = bar.add_task(what, total=len(D))
        for i in range(0, len(D), TEACHER_CHUNK):
            out.append(module(D[i:i + TEACHER_CHUNK]))
            bar.update(task, advance=len(out[-1]))
    return torch.cat(out)


@torch.no_grad()
def mse(module: torch.nn.Module, D: torch.Tensor, target: torch.Tensor) -> float:
    """MSE of the module's S against `target` over all windows."""
    was = module.training
    module.eval()
    pred = torch.cat([module(D[i:i + TEACHER_CHUNK]) for i in range(0, len(D), TEACHER_CHUNK)])
    module.train(was)
    return float(F.mse_loss(pred, target))


def _name(student: str, recording: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", recording.name.removesuffix(".h5")) or "recording"
    return f"{student}-cal-{stem}"


def calibrate(recording: str | Path, config: CalibrationConfig = CalibrationConfig(),
              out: str | Path | None = None, quiet: bool = False) -> CalibrationResult:
    """Calibrate `config.student` on `recording` against `config.teacher`; write the artifact
    folder (`out`, default `default_out_dir`) and return it with its card.

    Raises TrainingError (one line naming the input) for a recording that cannot be read or is
    too short, an unknown teacher or a student that is not a clutter-suppression artifact.
    """
    start = time.monotonic()
    recording = Path(recording)
    torch.manual_seed(config.seed)
    try:
        student = engines.load(config.student, backend="torch")
        teacher = engines.load(config.teacher, backend="torch", n_iter=config.teacher_iterations,
                               window=student.info.window)
    except EngineError as e:
        raise TrainingError(f"calibrate: {e}") from None
    card0 = getattr(student, "card", None)
    if card0 is None or card0.get("task") != TASK or not isinstance(getattr(student, "module", None),
                                                                    torch.nn.Module):
        raise TrainingError(f"--student {config.student!r}: not a trained {TASK} artifact (e.g. corona-ceus)")
    window = student.info.window
    sets, source = recording_windows(recording, config, window)
    targets = {k: teacher_targets(teacher.module, w.D,
                                  f"teacher {config.teacher} x{config.teacher_iterations} ({k})", quiet)
               for k, w in sets.items()}
    t_teacher = time.monotonic() - start
    shipped = student.module
    model = copy.deepcopy(shipped).float().train()
    for p in model.parameters():
        p.requires_grad_(True)
    held_D, held_S = sets["held_out"].D, targets["held_out"]
    mse_shipped = mse(shipped, held_D, held_S)
    n_train = len(sets["train"].D)
    batch = min(config.batch_size, n_train)
    train_config = TrainConfig(lr=config.lr, epochs=config.epochs, batch_size=batch,
                               schedule=Cosine(final=0.02), grad_clip=1.0,
                               eval_every=max(1, math.ceil(n_train / batch) // 2), seed=config.seed,
                               device="cpu")
    with Trainer(model, F.mse_loss, (sets["train"].D, targets["train"]), (sets["val"].D, targets["val"]),
                 train_config, quiet=quiet) as trainer:
        result = trainer.fit()
    mse_calibrated = mse(model, held_D, held_S)
    metrics: dict[str, Any] = {
        "held_out_mse_vs_teacher": {"shipped": round(mse_shipped, 6), "calibrated": round(mse_calibrated, 6)},
        "held_out_teacher_energy": round(float(held_S.square().mean()), 6),
        "held_out_windows": len(held_D),
    }
    truth = sets["held_out"].truth
    if truth is not None:  # a simulator's recording: how each does against the real bubbles
        metrics["held_out_mse_vs_truth"] = {
            "teacher": round(float(F.mse_loss(held_S, truth)), 6),
            "shipped": round(mse(shipped, held_D, truth), 6),
            "calibrated": round(mse(model, held_D, truth), 6)}
    name = _name(card0.get("name", config.student), recording)  # a path's card names it
    folder = Path(out) if out is not None else default_out_dir(name)
    wall = round(time.monotonic() - start, 3)  # rewritten with the ONNX export below
    calibration = {
        "teacher": config.teacher, "teacher_iterations": config.teacher_iterations,
        "student": config.student, "student_sha256": getattr(student, "artifact_sha256", None),
        "source_recording": source,
        "windows": {k: len(w.D) for k, w in sets.items()},
        "held_out_mse_vs_teacher": metrics["held_out_mse_vs_teacher"],
        "wall_time_s": wall, "teacher_time_s": round(t_teacher, 3),
    }
    _, H, W = source["frame_shape"]
    shape = ["N", window, 2, H, W]  # model.onnx is traced at the recording's frame size
    card = {
        "name": name, "task": TASK, "family": card0["family"],
        "description": (f"{config.student} calibrated on {recording.name} against {config.teacher} "
                        f"({config.teacher_iterations} iterations), without labels"),
        "architecture": card0["architecture"],
        "input": {**card0["input"], "shape": shape},
        "output": {**card0["output"], "shape": shape},
        "training": {
            "recipe": "calibrate", "data": f"{source['frames_used']} frames of {recording.name} "
                                           f"(stream {source['stream']!r}), {window}-frame blocks split "
                                           "70/10/20 % in time (train/validation/held out)",
            "loss": (f"MSE(S, S_teacher): the {config.teacher} bubbles after "
                     f"{config.teacher_iterations} iterations"),
            "validation_metric": "MSE(S, S_teacher)", "initialized_from": config.student,
            "config": train_config.model_dump(mode="json", exclude={"checkpoint_dir", "resume", "device"}),
            "stages": [{"name": result.stage, "steps": result.steps, "best_metric": result.best_metric,
                        "best_step": result.best_step, "wall_time_s": round(result.wall_time, 3)}],
            "wall_time_s": wall, "device": "cpu",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "calibration": calibration,
        "metrics": metrics,
    }
    write_artifact(folder, model, card)
    export_artifact(folder)  # model.onnx, and its entry in the card
    card = json.loads((folder / CARD).read_text(encoding="utf-8"))
    card["calibration"]["wall_time_s"] = card["training"]["wall_time_s"] = round(time.monotonic() - start, 3)
    (folder / CARD).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")  # the card is not hashed
    return CalibrationResult(folder, card)


def run_calibration(recording: str | Path, config: CalibrationConfig, out: str | Path | None = None,
                    quiet: bool = False) -> CalibrationResult:
    """`mbdl calibrate`: calibrate with one torch thread (a device shared with a live session) and
    print the folder, the held-out MSE against the teacher (shipped -> calibrated) and the time."""
    torch.set_num_threads(1)
    result = calibrate(recording, config, out, quiet)
    cal = result.card["calibration"]
    m = cal["held_out_mse_vs_teacher"]
    print(f"{result.folder}  held-out MSE vs {cal['teacher']} x{cal['teacher_iterations']} "
          f"({result.card['metrics']['held_out_windows']} windows): shipped {m['shipped']:.4g} -> "
          f"calibrated {m['calibrated']:.4g}  ({cal['wall_time_s']:.0f} s)")
    return result
