"""The clutter-suppression task: the Engine adapter of torch separators, the trained
architectures by name, and their artifacts as engines.

A separator is a torch module forward(D (N, T, 2, H, W)) -> S (N, T, 2, H, W), the bubble
(contrast agent) part of a window of complex I/Q frames; the session scores the newest
frame of S against the simulator's truth "bubbles" (EngineInfo.task "clutter-suppression").

    rpca-fista   RobustPCA (engines.imaging.rpca), model-based, built by `build_rpca_fista`
    corona       CORONA (engines.imaging.corona), unfolded                 (artifact)
    resnet       ComplexResNet (engines.imaging.resnet), black-box          (artifact)

Artifact layout (task "clutter-suppression"): weights.safetensors holds the module's state
dict; card.json has `architecture` = {"name", "kwargs"} and `input.window` = T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from engines.base import EngineInfo, Family, check_finite
from engines.errors import ArtifactError, BackendUnavailable, EngineInputError
from engines.imaging.corona import CORONA
from engines.imaging.corona_fast import CoronaFast
from engines.imaging.resnet import ComplexResNet
from engines.imaging.rpca import RobustPCA
from engines.runtime.chunking import run_in_chunks


@dataclass(frozen=True)
class Architecture:
    """How to build one trained architecture from JSON kwargs, and its family."""

    build: Callable[..., nn.Module]
    family: Family


ARCHITECTURES: dict[str, Architecture] = {
    "corona": Architecture(CORONA, "unfolded"),
    "corona-fast": Architecture(CoronaFast, "unfolded"),
    "resnet": Architecture(ComplexResNet, "black-box"),
}


class ClutterEngine:
    """Engine around a separator module: (N, T, 2, H, W) float32 I/Q windows -> (N, T, 2, H, W),
    the bubbles of every frame of the window (output="all", the default: a session then
    processes consecutive blocks), or (N, 1, 2, H, W), the newest frame's (output="last"). Runs
    the module in float32 without gradients; threads are the caller's (torch's intra-op setting)."""

    def __init__(self, name: str, family: Family, module: nn.Module, window: int,
                 output: str = "all") -> None:
        if output not in ("last", "all"):
            raise ValueError(f"output must be 'last' or 'all', got {output!r}")
        self.module = module.eval().float()
        self.window, self.output = int(window), output
        self.info = EngineInfo(
            name=name, family=family, task="clutter-suppression", backend="torch", window=self.window,
            in_shape=(self.window, 2, -1, -1), out_shape=(1 if output == "last" else self.window, 2, -1, -1),
            n_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 5 or x.shape[1] != self.window or x.shape[2] != 2:
            raise EngineInputError(f"{self.info.name}: expected (N, {self.window}, 2, H, W) I/Q windows, "
                                   f"got {x.shape}")
        if x.shape[0] == 0:
            raise EngineInputError(f"{self.info.name}: got an empty batch {x.shape}; expected N >= 1 inputs")
        check_finite(self.info.name, x)
        return run_in_chunks(self._separate, np.ascontiguousarray(x, dtype=np.float32))  # bounded memory

    def _separate(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            S = self.module(torch.from_numpy(x))
        S = S[:, -1:] if self.output == "last" else S
        return S.numpy()


def build_rpca_fista(*, backend: str = "auto", n_iter: int = 50, lambda1: float | None = None,
                     lambda2: float | None = None, window: int = 20, output: str = "all") -> ClutterEngine:
    """engines.load("rpca-fista", n_iter=..., window=...): RPCA by FISTA, torch only."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"rpca-fista: runs on torch only, not {backend!r}")
    kwargs = {k: float(v) for k, v in (("lambda1", lambda1), ("lambda2", lambda2)) if v is not None}
    return ClutterEngine("rpca-fista", "model-based", RobustPCA(n_iter=int(n_iter), **kwargs), int(window),
                         output)


def build_separator(name: str, **kwargs) -> nn.Module:
    """The untrained module of architecture `name` (kwargs as in the card)."""
    arch = ARCHITECTURES.get(name)
    if arch is None:
        raise ValueError(f"unknown clutter-suppression architecture {name!r}; "
                         f"known: {', '.join(ARCHITECTURES)}")
    return arch.build(**kwargs)


def engine_from_artifact(art, *, backend: str = "auto") -> ClutterEngine:
    """The ClutterEngine of a verified clutter-suppression artifact (engines.artifacts.Artifact).

    Rebuilds the card's architecture and loads the state dict strictly (a missing or extra
    tensor is an ArtifactError naming the file).
    """
    where = art.path / "card.json"
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: this loader runs torch only, not {backend!r}")
    spec = art.card.get("architecture") or {}
    window = (art.card.get("input") or {}).get("window")
    if not isinstance(window, int):
        raise ArtifactError(f"{where}: input.window (frames per window) missing")
    module = art.build_module(lambda: build_separator(spec.get("name"), **spec.get("kwargs", {})),
                              spec.get("name"))
    engine = ClutterEngine(art.card.get("name", art.path.name), ARCHITECTURES[spec["name"]].family, module,
                           window)
    engine.card = art.card
    return engine


def separated_sliding(separator: torch.nn.Module, D: torch.Tensor, n: int, window: int = 20,
                      residual: bool = False) -> torch.Tensor:
    """The bubbles (n, 1, 2, h, w) of the first n frames of D (m >= n frames, 2, h, w) by a
    sliding window of `window` frames (hop 1) whose centre frame is kept: frame t comes from the
    window t - (window - 1 - lag) .. t + lag with lag = window // 2 (clamped to the frames there
    are), as a live session with hop = 1, lag = window // 2 publishes it (lag frames late;
    `centre_frames` on the torch module). `residual`: D - L (the data minus the separator's
    low-rank tissue estimate: the bubbles at full amplitude, unshrunk) instead of its S."""

    class Windows:  # the module as a window engine for centre_frames: numpy in, S or D - L out
        info = SimpleNamespace(name=type(separator).__name__, window=window)

        def __call__(self, x: np.ndarray) -> np.ndarray:
            y = separator(torch.from_numpy(x))
            return (x - y[:, 0].numpy()) if residual else y.numpy()

    pair = getattr(separator, "pair_output", False)
    separator.pair_output = residual
    try:
        with torch.no_grad():
            out = centre_frames(Windows(), D.numpy(), n, window // 2)
    finally:
        separator.pair_output = pair
    return torch.from_numpy(out)[:, None]


def centre_frames(engine, D: np.ndarray, n: int, lag: int, hop: int = 1) -> np.ndarray:
    """The engine's output (n, 2, h, w) for the first n frames of D (m >= n frames) as a session
    with this hop and lag publishes it: windows of T frames end at frames T - 1, T - 1 + hop, ...;
    each publishes its frames T - hop - lag .. T - 1 - lag (hop 1: frame t from the window
    t - (T - 1 - lag) .. t + lag). Frames before the first published one take the first window."""
    T, m = engine.info.window, len(D)
    if m < T:
        raise ValueError(f"{engine.info.name}: a window of {T} frames needs that many, got {m}")
    if not (1 <= hop <= T and 0 <= lag <= T - hop):
        raise ValueError(f"{engine.info.name}: hop {hop} and lag {lag} do not fit a window of {T}")
    out = np.empty((n, *D.shape[1:]), np.float32)
    outputs: dict[int, np.ndarray] = {}
    for t in range(n):
        k = max(0, -(-(t + lag - (T - 1)) // hop))  # the first window that publishes frame t
        a = min(hop * k, m - T)
        if a not in outputs:
            outputs = {a: engine(np.ascontiguousarray(D[a:a + T][None]))[0]}  # windows in order: keep one
        out[t] = outputs[a][t - a]
    return out
