"""Constant-memory running statistics for a live session: rates and latency percentiles.

A session runs for hours; every statistic here is O(1) in memory: latencies go into
a fixed log-spaced histogram (1 % relative resolution from 1 us to 1000 s), rates are
measured over a short trailing window of timestamps.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

import numpy as np


class LatencyHistogram:
    """Percentiles of a stream of durations (seconds) to about 1 % relative error.

    Bins are geometric with ratio 1.01 between 1e-6 s and 1e3 s; a percentile is
    reported as the geometric centre of its bin. Not thread-safe: one writer.
    """

    LO, HI, RATIO = 1e-6, 1e3, 1.01

    def __init__(self) -> None:
        self._log_ratio = math.log(self.RATIO)
        self.n_bins = int(math.ceil(math.log(self.HI / self.LO) / self._log_ratio)) + 2
        self.counts = np.zeros(self.n_bins, dtype=np.int64)
        self.n = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        if seconds <= self.LO:
            b = 0
        else:
            b = min(int(math.log(seconds / self.LO) / self._log_ratio) + 1, self.n_bins - 1)
        self.counts[b] += 1
        self.n += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) in seconds; NaN when empty."""
        if self.n == 0:
            return float("nan")
        rank = max(1, math.ceil(q / 100.0 * self.n))
        b = int(np.searchsorted(np.cumsum(self.counts), rank))
        if b == 0:
            return self.LO
        return min(self.LO * self.RATIO ** (b - 0.5), self.max)

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else float("nan")

    def summary_ms(self) -> dict[str, float]:
        return {
            "p50_ms": 1e3 * self.percentile(50),
            "p95_ms": 1e3 * self.percentile(95),
            "p99_ms": 1e3 * self.percentile(99),
            "max_ms": 1e3 * self.max if self.n else float("nan"),
            "mean_ms": 1e3 * self.mean,
        }


class RateMeter:
    """Events per second over the trailing `window` seconds."""

    def __init__(self, window: float = 2.0, maxlen: int = 4096) -> None:
        self.window = window
        self._stamps: deque[float] = deque(maxlen=maxlen)

    def tick(self, now: float | None = None) -> None:
        self._stamps.append(time.monotonic() if now is None else now)

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        s = self._stamps
        while s and now - s[0] > self.window:
            s.popleft()
        if len(s) < 2:
            return 0.0
        span = max(now - s[0], s[-1] - s[0])
        return (len(s) - 1) / span if span > 0 else 0.0


class MeanSquare:
    """Running mean of squared errors, overall and over the recent `recent` values."""

    def __init__(self, recent: int = 200) -> None:
        self.sum = 0.0
        self.n = 0
        self._recent: deque[float] = deque(maxlen=recent)

    def add(self, mse: float) -> None:
        self.sum += mse
        self.n += 1
        self._recent.append(mse)

    @staticmethod
    def _db(v: float) -> float:
        return 10.0 * math.log10(v) if v > 0 else float("-inf")

    def overall_db(self) -> float:
        return self._db(self.sum / self.n) if self.n else float("nan")

    def recent_db(self) -> float:
        return self._db(sum(self._recent) / len(self._recent)) if self._recent else float("nan")


class ErrorRate:
    """Running error rate of a symbol detector: the mean of its per-block rates (blocks of one
    length), overall and over the recent `recent` blocks (20 of 500 symbols: 10,000 symbols)."""

    def __init__(self, recent: int = 20) -> None:
        self.sum = 0.0
        self.n = 0
        self._recent: deque[float] = deque(maxlen=recent)

    def add(self, rate: float) -> None:
        self.sum += rate
        self.n += 1
        self._recent.append(rate)

    def overall(self) -> float:
        return self.sum / self.n if self.n else float("nan")

    def recent(self) -> float:
        return sum(self._recent) / len(self._recent) if self._recent else float("nan")


class Counter:
    """A thread-safe integer counter (several producers may bump it)."""

    def __init__(self) -> None:
        self._v = 0
        self._lock = threading.Lock()

    def add(self, k: int = 1) -> None:
        with self._lock:
            self._v += k

    @property
    def value(self) -> int:
        return self._v
