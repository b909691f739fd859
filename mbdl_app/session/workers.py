"""The session's threads: one acquisition thread per source, one worker per engine.

Acquisition never waits for inference: it pushes each item into every consumer's
ring/queue and the recorder queue, all non-blocking. Workers own their engine; an
engine that raises is stopped and marked failed on the bus while the rest go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from drivers.base import Frame, Sample, Source
from drivers.errors import SourceEnded, SourceError
from engines.comms.sum_product import symbol_error_rate
from mbdl_app.session.bus import Result, ResultBus
from mbdl_app.session.rings import FrameRing, SampleQueue
from mbdl_app.session.stats import RateMeter

log = logging.getLogger(__name__)

# Which truth array an engine's output is scored against, by task.
TRUTH_OF_TASK = {"clutter-suppression": "bubbles", "tracking": "state", "symbol-detection": "symbols",
                 "sparse-coding": "code"}


@dataclass
class SourceStats:
    """Written by the acquisition thread only; read (racily but safely) by others."""

    name: str
    uri: str
    nominal_hz: float = 0.0
    state: str = "starting"  # starting | running | error (reconnecting) | ended | failed | stopped
    error: str = ""
    items: int = 0
    gaps: int = 0  # items missing by index (a device or file dropped them)
    errors: int = 0  # SourceErrors raised by read() (device faults; the source reconnects)
    max_lag_s: float = 0.0  # how far acquisition fell behind the source's own clock
    rate: RateMeter = field(default_factory=RateMeter)
    t_first: float = float("nan")

    def snapshot(self) -> dict:
        return {
            "source": self.name, "uri": self.uri, "state": self.state, "error": self.error,
            "items": self.items, "gaps": self.gaps, "errors": self.errors, "fps": self.rate.rate(),
            "nominal_hz": self.nominal_hz, "max_lag_ms": 1e3 * self.max_lag_s,
        }


class AcquisitionThread(threading.Thread):
    """Reads one source until it ends, fails or the session stops."""

    def __init__(
        self,
        source: Source,
        stats: SourceStats,
        consumers: list[Callable[[Frame | Sample], None]],
        stop: threading.Event,
        speed: float = 1.0,
    ) -> None:
        super().__init__(name=f"acquire-{stats.name}", daemon=True)
        self.source, self.stats, self.consumers, self._halt = source, stats, consumers, stop
        self._speed = speed

    def run(self) -> None:
        st = self.stats
        st.state = "running"
        last_index = None
        item_t0 = 0.0
        while not self._halt.is_set():
            try:
                item = self.source.read(timeout=0.1)
            except SourceEnded:
                st.state = "ended"
                return
            except SourceError as e:
                # A device fault (unplugged camera or serial port): the source names it
                # once and reconnects on later reads, so keep reading; the error stays
                # visible in the stats until items flow again.
                st.errors += 1
                if st.state != "error":
                    log.error("%s", e)
                st.state, st.error = "error", str(e)
                continue
            except Exception as e:  # a driver bug or a corrupt file must not take the session down
                st.state, st.error = "failed", f"{st.uri}: {type(e).__name__}: {e}"
                log.error("source %s failed: %s", st.name, st.error)
                return
            if item is None:
                continue
            if st.state == "error":
                st.state = "running"
            if last_index is None:
                st.t_first, item_t0 = item.t_host, item.t
            elif item.index != last_index + 1:
                st.gaps += max(item.index - last_index - 1, 0)
            elif self._speed > 0:
                due = st.t_first + (item.t - item_t0) / self._speed
                st.max_lag_s = max(st.max_lag_s, item.t_host - due)
            last_index = item.index
            for push in self.consumers:
                push(item)
            st.items += 1
            st.rate.tick(item.t_host)
        st.state = "stopped"


def squared_error(estimate: np.ndarray, truth: np.ndarray | None) -> float | None:
    if truth is None:
        return None
    return float(np.mean((estimate.astype(np.float64) - truth) ** 2))


class EngineWorker(threading.Thread):
    """Base: runs `_loop` and turns any exception into a failed engine on the bus."""

    def __init__(self, label: str, stream: str, engine, bus: ResultBus, stop: threading.Event,
                 on_result: Callable[[Result], None] | None = None) -> None:
        super().__init__(name=f"engine-{label}", daemon=True)
        self.label, self.stream, self.engine, self.bus, self._halt = label, stream, engine, bus, stop
        self.on_result = on_result
        self.truth_key = TRUTH_OF_TASK.get(engine.info.task)
        # a symbol detector declares its alphabet: it is scored by its symbol error rate, not MSE
        self.alphabet = getattr(engine, "alphabet", None)

    def run(self) -> None:
        self.bus.mark(self.label, "running")
        try:
            self._loop()
        except Exception as e:
            msg = f"engine {self.label}: {type(e).__name__}: {e}"
            log.error("%s (stopped; the other engines go on)", msg)
            self.bus.mark(self.label, "failed", msg)
            return
        self.bus.mark(self.label, "stopped")

    def _emit(self, r: Result, skipped: int = 0) -> None:
        self.bus.publish(r, skipped)
        if self.on_result is not None:
            self.on_result(r)

    def _loop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class ImagingWorker(EngineWorker):
    """Feeds the newest full window of its stream to a windowed imaging engine.

    Every `hop` new frames it runs the engine on the window of the last T frames and
    publishes one result per new frame: the output frame aligned with it (the last `hop`
    frames of the output), scored against that frame's truth. hop = T (the default of
    the session) processes consecutive blocks, every frame once while the engine keeps
    up; hop = 1 a sliding window (T - 1 frames recomputed per result). An engine with one
    output frame per window (a stack-level estimate) publishes one result per call, at the
    window's newest frame. When the engine falls behind, the frames it never saw are
    counted as skipped. `lag` > 0 (an engine with an output frame per input frame) publishes the
    output frames `lag` before the newest ones instead, each aligned with its own input frame.
    """

    def __init__(self, *args, ring: FrameRing, lag: int = 0, **kw) -> None:
        super().__init__(*args, **kw)
        self.ring = ring
        self.hop = ring.hop
        self.lag = lag
        self._window = ring.new_window()  # preallocated, reused every call

    def _loop(self) -> None:
        after = 0
        while not self._halt.is_set():
            got = self.ring.take(after, self._window, timeout=0.1)
            if got is None:
                continue
            end, frames = got
            skipped = end - after - self.hop if after else 0
            after = end
            t_start = time.monotonic()
            out = self.engine(self._window[None])[0]
            t_end = time.monotonic()
            new = min(self.hop, len(out))
            lag = self.lag if len(out) == len(frames) else 0
            for j in range(new):
                frame = frames[len(frames) - new - lag + j]
                s = out[len(out) - new - lag + j][None]
                mse = None
                if self.truth_key and self.truth_key in frame.truth:
                    mse = squared_error(s[0], frame.truth[self.truth_key])
                self._emit(Result(self.label, self.stream, frame.index, frame.t, s,
                                  frame.t_host, t_start, t_end, mse=mse, truth=frame.truth),
                           skipped if j == 0 else 0)


class TrackerWorker(EngineWorker):
    """Steps a tracker through every sample of its stream, in order.

    A backward jump of the index (a replay sought back, a recording looped) restarts
    the filter from its prior; on stop, the samples already queued are still filtered.
    """

    def __init__(self, *args, queue: SampleQueue, **kw) -> None:
        super().__init__(*args, **kw)
        self.queue = queue
        self._dropped = 0
        self._last_index: int | None = None

    def _loop(self) -> None:
        while not self._halt.is_set():
            self._filter(self.queue.drain(timeout=0.1))
        while not self.queue.closed:  # the acquisition thread may still push its last samples
            self._filter(self.queue.drain(timeout=0.1))
        self._filter(self.queue.drain(timeout=0.0))

    def _filter(self, samples) -> None:
        for s in samples:
            if self._last_index is not None and s.index <= self._last_index:
                self.engine.reset(1)
            self._last_index = s.index
            t_start = time.monotonic()
            est = self.engine.step(s.value[None])
            t_end = time.monotonic()
            mean = est.mean[0]
            cov = None if est.cov is None else est.cov[0]
            gated = est.gated is not None and bool(est.gated[0])
            truth = s.truth.get(self.truth_key) if self.truth_key else None
            mse, ser = squared_error(mean, truth), None
            if self.alphabet is not None:
                mse, ser = None, None if truth is None else symbol_error_rate(mean, truth, self.alphabet)
            skipped, self._dropped = self.queue.dropped - self._dropped, self.queue.dropped
            self._emit(Result(self.label, self.stream, s.index, s.t, mean,
                              s.t_host, t_start, t_end, cov=cov, mse=mse, ser=ser, gated=gated), skipped)
