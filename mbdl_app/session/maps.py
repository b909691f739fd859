"""The live super-resolved map: a session-side sink that accumulates a ULM engine's localizations.

A super-resolution engine (task "super-resolution", engines/imaging/ulm.py) is stateless: each
result is one frame's localization image on the fine grid. Accumulating them is the session's
job, so that the engine stays a pure function and runs on any backend. The sink is called
with every result of its engine (on that engine's worker thread, after the result is
published), adds it to an `Accumulator`, and publishes the accumulated map as a result of its
own pseudo-engine `<label>.map` at most every `period` seconds: the GUI and `status()` show it
like any engine (its fps is the map's refresh rate, its latency the accumulation's), and the
recorder writes it under /results/<stream>/<label>.map.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from engines.imaging.super_resolved_map import Accumulator
from mbdl_app.session.bus import EngineStats, Result, ResultBus

MAP_TASK = "super-resolution"  # results of engines with this task are accumulated
MAP_PERIOD_S = 0.25  # republished at most 4 times a second: every result of an engine giving 2-4 a second


def map_label(engine_label: str) -> str:
    """The pseudo-engine label under which the map of `engine_label` is published and recorded."""
    return f"{engine_label}.map"


class MapSink:
    """Accumulates one engine's localization images (1, 1, H, W) and publishes the map (1, 1, H, W).

    Called only from the engine's worker thread; `flush` (after that thread ended) publishes
    the final map if anything was added since the last publication.
    """

    def __init__(self, engine: str, stream: str, family: str, shape: tuple[int, int], bus: ResultBus,
                 on_result: Callable[[Result], None] | None = None, period: float = MAP_PERIOD_S) -> None:
        self.label = map_label(engine)
        self.stream, self.bus, self.on_result, self.period = stream, bus, on_result, period
        self.accumulator = Accumulator(tuple(shape))
        self._last_publish = float("-inf")
        self._pending: Result | None = None
        bus.register(EngineStats(self.label, stream, family, f"{MAP_TASK}-map", "numpy"), history=2)
        bus.mark(self.label, "running")

    def __call__(self, r: Result) -> None:
        t_start = time.monotonic()
        self.accumulator.add(r.data[-1, 0])
        self._pending = r
        if t_start - self._last_publish >= self.period:
            self._publish(t_start)

    def _publish(self, t_start: float) -> None:
        r, self._pending = self._pending, None
        self._last_publish = t_start
        out = Result(self.label, self.stream, r.index, r.t, self.accumulator.map[None, None].copy(),
                     r.t_acquired, t_start, time.monotonic())
        self.bus.publish(out)
        if self.on_result is not None:
            self.on_result(out)

    def flush(self) -> None:
        """Publish the map of the results added since the last publication, if any."""
        if self._pending is not None:
            self._publish(time.monotonic())
        self.bus.mark(self.label, "stopped")
