"""Hand-over buffers between one acquisition thread and one engine worker.

FrameRing (imaging engines): a preallocated ring of the last T frames; the worker
always takes the NEWEST full window ("latest wins"), so a slow engine skips frames
and acquisition never waits. With hop h a window is taken every h frames (h = T:
consecutive blocks, every frame processed once while the engine keeps up).
SampleQueue (trackers): a filter must see every sample in order, so samples queue
up to a bounded backlog; only beyond it are the oldest dropped (and counted).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from drivers.base import Frame, Sample


class FrameRing:
    """The last frames of one stream, preallocated; windows of `window` frames copied out
    oldest-first, one every `hop` frames.

    Windows end at push counts window, window + hop, window + 2 hop, ... (aligned to the
    stream, not to when the worker asks): a frame's result never depends on timing, so a
    replay reproduces it. The ring keeps window + hop - 1 frames, enough for the newest
    aligned window whatever arrived after it, plus `backlog`: a worker fed in bursts (a
    chained engine reading a block engine's output) takes the windows in order while
    they are at most `backlog` frames behind, and only then jumps to the newest.
    """

    def __init__(self, window: int, shape: tuple[int, ...], hop: int = 1, backlog: int = 0) -> None:
        if not 1 <= hop <= window:
            raise ValueError(f"hop {hop} must be within 1..{window} (the window)")
        self.window, self.hop, self.backlog = window, hop, max(int(backlog), 0)
        self._size = window + hop - 1 + self.backlog
        self._buf = np.zeros((self._size, *shape), dtype=np.float32)
        self._meta: list[Frame | None] = [None] * self._size
        self._count = 0  # frames pushed so far
        self._cond = threading.Condition()
        self._closed = False

    def new_window(self) -> np.ndarray:
        """A buffer of the window's shape for `take` to copy into (allocate once)."""
        return np.zeros((self.window, *self._buf.shape[1:]), dtype=np.float32)

    def push(self, frame: Frame) -> None:
        with self._cond:
            slot = self._count % self._size
            self._buf[slot] = frame.data
            self._meta[slot] = frame
            self._count += 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _newest_end(self) -> int:
        """The push count at which the newest complete aligned window ends (0: none yet)."""
        if self._count < self.window:
            return 0
        return self.window + (self._count - self.window) // self.hop * self.hop

    def take(self, after: int, out: np.ndarray, timeout: float) -> tuple[int, list[Frame]] | None:
        """Wait for an aligned window ending after push count `after`: the next one (ending at
        after + hop) while it is within the backlog, else the newest; copy it into `out`.

        Returns (its end count, its frames oldest-first) or None on timeout/close. Of the
        `end - after` frames since the previous window, the newest `hop` are this window's
        new ones; the rest were skipped (the worker fell behind).
        """
        with self._cond:
            ready = self._cond.wait_for(lambda: self._closed or self._newest_end() > after, timeout)
            if not ready or self._closed:
                return None
            end = self._newest_end()
            if after and self._count - (after + self.hop) <= self.hop - 1 + self.backlog:
                end = after + self.hop  # still in the ring: in order
            idx = [(end - self.window + i) % self._size for i in range(self.window)]
            out[:] = self._buf[idx]
            return end, [self._meta[i] for i in idx]


class SampleQueue:
    """Ordered samples for a tracker; beyond `capacity` the oldest are dropped."""

    def __init__(self, capacity: int = 4096) -> None:
        self._q: deque[Sample] = deque(maxlen=capacity)
        self._cond = threading.Condition()
        self.dropped = 0
        self._closed = False

    def push(self, sample: Sample) -> None:
        with self._cond:
            if len(self._q) == self._q.maxlen:
                self.dropped += 1
            self._q.append(sample)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def drain(self, timeout: float) -> list[Sample]:
        """All queued samples in order (waits up to `timeout` for the first)."""
        with self._cond:
            self._cond.wait_for(lambda: self._closed or bool(self._q), timeout)
            out = list(self._q)
            self._q.clear()
            return out
