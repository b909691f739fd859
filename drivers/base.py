"""Core data types of the acquisition layer and the Source protocol.

Units: `t` in seconds on the source's own timeline (simulation time, device clock or
recorded time); `t_host` is `time.monotonic()` on this host when the item was read,
the first of the per-stage timestamps the session uses to measure latency.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from drivers.errors import SourceEnded, SourceError, SourceNotOpen


@dataclass(slots=True)
class Frame:
    """One image: `data` float32 (C, H, W); C = 1 gray, C = 2 ultrasound I/Q.

    `truth` holds ground-truth arrays when known (simulators, annotated recordings),
    each with the fixed shape declared in `SourceInfo.truth_shapes`; else it is empty.
    """

    index: int
    t: float
    data: np.ndarray
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    t_host: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Sample:
    """One sensor reading: `value` float64 (m,); `truth` as for Frame (e.g. "state")."""

    index: int
    t: float
    value: np.ndarray
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    t_host: float = field(default_factory=time.monotonic)


Item = Frame | Sample


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """What a source produces, known once it is open.

    kind: "frames" (Frame, `shape` = (C, H, W)) or "samples" (Sample, `shape` = (m,)).
    rate_hz: nominal rate; 0 when unknown. meta: JSON-serializable facts (pixel size,
    PSF, simulator parameters, device name); meta["model"], when present, holds the
    physical model parameters a model-based engine needs (e.g. the Lorenz J, dt, r2).
    truth_shapes: the shape of every truth array this source attaches to its items.
    """

    uri: str
    kind: Literal["frames", "samples"]
    shape: tuple[int, ...]
    rate_hz: float
    meta: dict[str, Any] = field(default_factory=dict)
    truth_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """A stream of Frames or Samples.

    Lifecycle: `open()` once (acquires the device or file; raises SourceError naming
    the URI on failure), then `read()` repeatedly from ONE acquisition thread, then
    `close()` (idempotent; also called by `__exit__`). `info` is valid after `open()`.

    `read(timeout)` blocks at most `timeout` seconds and returns the next item, or None
    when none is ready yet. Live sources pace themselves at their rate (a simulator
    with speed=0 runs as fast as it can). It raises SourceEnded at the end of a file
    or recording, SourceError on a fault (message: URI and cause).
    """

    uri: str

    @property
    def info(self) -> SourceInfo: ...

    def open(self) -> None: ...

    def read(self, timeout: float = 0.1) -> Item | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Source: ...

    def __exit__(self, *exc: object) -> None: ...


def check_pacing(uri: str, speed: float, rate: float | None = None) -> None:
    """SourceError naming `uri` unless speed >= 0 and (when given) rate > 0, both finite."""
    if not (speed >= 0 and math.isfinite(speed)):
        raise SourceError(f"{uri}: speed must be a finite number >= 0, got {speed}")
    if rate is not None and not (rate > 0 and math.isfinite(rate)):
        raise SourceError(f"{uri}: rate must be a finite number > 0, got {rate}")


class Pacer:
    """Releases item k at `t0 + k / (rate * speed)`; speed 0 means as fast as possible.

    Used by simulators and replay so that a stream keeps real (or scaled) time without
    drifting: deadlines are absolute, so a late read does not push later ones back.
    """

    def __init__(self, rate_hz: float, speed: float = 1.0) -> None:
        if speed < 0:
            raise ValueError(f"speed must be >= 0, got {speed}")
        self.period = 0.0 if speed == 0 or rate_hz <= 0 else 1.0 / (rate_hz * speed)
        self.t0: float | None = None

    def wait(self, k: int, timeout: float) -> bool:
        """Sleep until item k is due or `timeout` passes; True when item k is due."""
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        due = self.t0 + k * self.period
        if due <= now:
            return True
        if due - now > timeout:
            time.sleep(max(timeout, 0.0))
            return False
        time.sleep(due - now)
        return True


class SourceBase:
    """Shared lifecycle for sources: context manager and an `info` guard."""

    uri: str
    _info: SourceInfo | None = None

    @property
    def info(self) -> SourceInfo:
        if self._info is None:
            raise SourceNotOpen(f"{self.uri}: source is not open")
        return self._info

    def open(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file; safe to call twice."""

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimulatedFrameSource(SourceBase):
    """A frame simulator's read loop: render frame k before waiting for its deadline (so it leaves
    on time), hand it over at the deadline, end after `n_frames`.

    Subclasses set in open(): `_sim` (with an `index`: frames rendered so far) and `_pacer`; and
    implement `_render(k) -> Frame` (frame k, stepping the simulator once). read() is called from
    one acquisition thread.
    """

    _sim: Any = None
    _next: Frame | None = None
    _pacer: Pacer
    n_frames: int | None = None

    def _render(self, k: int) -> Frame:  # pragma: no cover - overridden
        raise NotImplementedError

    def read(self, timeout: float = 0.1) -> Frame | None:
        if self._sim is None:
            raise SourceError(f"{self.uri}: source is not open")
        if self._next is None:
            if self.n_frames is not None and self._sim.index >= self.n_frames:
                raise SourceEnded(f"{self.uri}: ended after {self.n_frames} frames")
            self._next = self._render(self._sim.index)
        if not self._pacer.wait(self._next.index, timeout):
            return None
        frame, self._next = self._next, None
        frame.t_host = time.monotonic()  # when it was handed over, not when it was rendered
        return frame

    def close(self) -> None:
        self._sim = None
        self._next = None
