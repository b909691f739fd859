"""Hand-over buffers between one acquisition thread and one engine worker.

FrameRing (imaging engines): a preallocated ring of the last T frames; the worker
always takes the NEWEST full window ("latest wins"), so a slow engine skips frames
and acquisition never waits. SampleQueue (trackers): a filter must see every
sample in order, so samples queue up to a bounded backlog; only beyond it are the
oldest dropped (and counted).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from drivers.base import Frame, Sample


class FrameRing:
    """The last `window` frames of one stream, preallocated, copied out oldest-first."""

    def __init__(self, window: int, shape: tuple[int, ...]) -> None:
        self.window = window
        self._buf = np.zeros((window, *shape), dtype=np.float32)
        self._meta: list[Frame | None] = [None] * window
        self._count = 0  # frames pushed so far
        self._cond = threading.Condition()
        self._closed = False

    def new_window(self) -> np.ndarray:
        """A buffer of the window's shape for `take` to copy into (allocate once)."""
        return np.zeros_like(self._buf)

    def push(self, frame: Frame) -> None:
        with self._cond:
            slot = self._count % self.window
            self._buf[slot] = frame.data
            self._meta[slot] = frame
            self._count += 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take(self, after: int, out: np.ndarray, timeout: float) -> tuple[int, Frame] | None:
        """Wait for a full window newer than push-count `after`; copy it into `out`.

        Returns (count, newest frame) or None on timeout/close. `count - after - 1`
        frames arrived and were skipped since the previous take.
        """
        with self._cond:
            ready = self._cond.wait_for(
                lambda: self._closed or (self._count > after and self._count >= self.window),
                timeout,
            )
            if not ready or self._closed:
                return None
            count = self._count
            start = count % self.window  # oldest frame of the window
            n_tail = self.window - start
            out[:n_tail] = self._buf[start:]
            out[n_tail:] = self._buf[:start]
            return count, self._meta[(count - 1) % self.window]


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
