"""The result bus: the newest result of each engine, a bounded history, and live stats.

Engine workers publish; the GUI and the headless CLI pull the newest result at their
own rate (never every frame). All methods are thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from mbdl_app.session.stats import ErrorRate, LatencyHistogram, MeanSquare, RateMeter


@dataclass(slots=True)
class Result:
    """One engine output with its per-stage stamps (time.monotonic seconds).

    index / t: the newest input item it was computed from (source index and time).
    data: imaging (T_out, C, H, W) or tracker mean (n,); cov (n, n) or None.
    mse: squared error against the truth of that item when known, else None.
    truth: that item's truth arrays (not recorded), passed on to chained engines.
    ser: a symbol detector's symbol error rate on that block when the symbols are known, else None.
    """

    engine: str
    stream: str
    index: int
    t: float
    data: np.ndarray
    t_acquired: float
    t_start: float
    t_end: float
    cov: np.ndarray | None = None
    mse: float | None = None
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    gated: bool = False  # a tracker predicted through: its observation was missing or an outlier
    ser: float | None = None

    @property
    def compute_latency(self) -> float:
        return self.t_end - self.t_start

    @property
    def e2e_latency(self) -> float:
        """From acquisition of the newest input to the end of inference."""
        return self.t_end - self.t_acquired


@dataclass
class EngineStats:
    """Live statistics of one engine; written by its worker, read under the bus lock."""

    engine: str
    stream: str
    family: str = ""
    task: str = ""
    backend: str = ""
    state: str = "starting"  # starting | running | failed | stopped
    error: str = ""
    results: int = 0
    skipped: int = 0  # inputs that arrived while busy and were never processed
    gated: int = 0  # tracker observations not used (missing or outliers): predicted through
    first_call_s: float = float("nan")
    compute: LatencyHistogram = field(default_factory=LatencyHistogram)
    e2e: LatencyHistogram = field(default_factory=LatencyHistogram)
    rate: RateMeter = field(default_factory=RateMeter)
    mse: MeanSquare = field(default_factory=MeanSquare)
    ser: ErrorRate = field(default_factory=ErrorRate)

    def snapshot(self, now: float | None = None) -> dict:
        c, e = self.compute.summary_ms(), self.e2e.summary_ms()
        return {
            "engine": self.engine, "stream": self.stream, "family": self.family,
            "task": self.task, "backend": self.backend, "state": self.state,
            "error": self.error, "results": self.results, "skipped": self.skipped, "gated": self.gated,
            "fps": self.rate.rate(now), "first_call_ms": 1e3 * self.first_call_s,
            "latency_p50_ms": c["p50_ms"], "latency_p95_ms": c["p95_ms"],
            "latency_p99_ms": c["p99_ms"], "latency_max_ms": c["max_ms"],
            "e2e_p50_ms": e["p50_ms"], "e2e_p99_ms": e["p99_ms"],
            "mse_db": self.mse.recent_db(), "mse_db_overall": self.mse.overall_db(),
            "ser": self.ser.recent(), "ser_overall": self.ser.overall(),
        }


class ResultBus:
    """Latest result + bounded history per engine, and each engine's stats."""

    def __init__(self, history: int = 256) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, Result] = {}
        self._history: dict[str, deque[Result]] = {}
        self._stats: dict[str, EngineStats] = {}
        self._hist_len = history
        self._seq = 0  # bumps on every publish, so pullers can tell "nothing new"

    def register(self, stats: EngineStats, history: int | None = None) -> None:
        """Add an engine; `history` = results kept (default: the bus's)."""
        with self._lock:
            self._stats[stats.engine] = stats
            self._history[stats.engine] = deque(maxlen=history or self._hist_len)

    def publish(self, r: Result, skipped: int = 0) -> None:
        with self._lock:
            st = self._stats[r.engine]
            self._latest[r.engine] = r
            self._history[r.engine].append(r)
            st.state = "running"
            st.results += 1
            st.skipped += skipped
            st.gated += r.gated
            st.compute.add(r.compute_latency)
            st.e2e.add(r.e2e_latency)
            st.rate.tick(r.t_end)
            if r.mse is not None:
                st.mse.add(r.mse)
            if r.ser is not None:
                st.ser.add(r.ser)
            self._seq += 1

    def mark(self, engine: str, state: str, error: str = "") -> None:
        with self._lock:
            st = self._stats[engine]
            st.state = state
            if error:
                st.error = error

    def set_first_call(self, engine: str, seconds: float) -> None:
        with self._lock:
            self._stats[engine].first_call_s = seconds

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def engines(self) -> list[str]:
        with self._lock:
            return list(self._stats)

    def latest(self, engine: str) -> Result | None:
        with self._lock:
            return self._latest.get(engine)

    def history(self, engine: str) -> list[Result]:
        with self._lock:
            return list(self._history.get(engine, ()))

    def keep(self, engine: str, results: int) -> None:
        """Keep the last `results` results of `engine` (e.g. two blocks of a block engine)."""
        with self._lock:
            self._history[engine] = deque(self._history[engine], maxlen=max(int(results), 1))

    def paced(self, engine: str, now: float | None = None) -> Result | None:
        """The result to show at `now` for smooth playback of an engine publishing in bursts
        (a block engine: `hop` frames at once): the newest result whose input was acquired at
        least `delay` before now, delay = the 95th percentile of the end-to-end latencies in
        the history. Shown this way a block's frames play at the source's rate, `delay`
        behind it, instead of jumping once per block; None before the first result."""
        now = time.monotonic() if now is None else now
        with self._lock:
            h = self._history.get(engine)
            if not h:
                return None
            lat = sorted(r.t_end - r.t_acquired for r in h)
            delay = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
            shown = h[0]
            for r in h:  # oldest first; a few dozen at most
                if r.t_acquired + delay <= now:
                    shown = r
            return shown

    def stats(self, engine: str) -> dict:
        with self._lock:
            return self._stats[engine].snapshot(time.monotonic())

    def snapshot(self) -> dict[str, dict]:
        now = time.monotonic()
        with self._lock:
            return {k: st.snapshot(now) for k, st in self._stats.items()}
