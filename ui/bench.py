"""`mbdl bench gui`: display rate and event-loop lag of the GUI on the default session.

The event-loop lag is measured by a precise 5 ms timer: each firing's delay beyond
its period is time the loop was blocked (painting, pulling results, Python work).
The display rate counts imaging-view updates that showed a new input frame: it can be
no higher than the frame rate, so the check asks for 30/s or 90% of the fastest frame
stream, whichever is lower.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
from PySide6.QtCore import QElapsedTimer, Qt, QTimer

from ui.views.image_grid import ImageGridView
from ui.views.track_view import TrackView

PERIOD_MS = 5


def run_gui_bench(out: Path, duration: float = 30.0, warmup: float = 3.0) -> int:
    if not os.environ.get("QT_QPA_PLATFORM") and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from ui.app import build_window, make_app

    app = make_app()
    window = build_window()
    window.show()
    lags: list[float] = []
    clock = QElapsedTimer()
    state = {"last": None, "t0": time.monotonic(), "counts0": None}

    def views():
        return [v for _, v in window.views.values()]

    def beat():
        now = clock.nsecsElapsed() / 1e9
        if state["last"] is not None and time.monotonic() - state["t0"] > warmup:
            lags.append(max(0.0, now - state["last"] - PERIOD_MS / 1e3))
        state["last"] = now

    per_second: list[int] = []

    def second():
        imaging = [v.updates for v in views() if isinstance(v, ImageGridView)]
        per_second.append(sum(imaging))
        if window.studio.session is not None:  # the last status of the run, for the report
            state["status"] = window.studio.session.status()
            state["frame_hz"] = max((s.info.rate_hz for s in window.studio.session.streams.values()
                                     if s.info.kind == "frames"), default=0.0)

    timer = QTimer()
    timer.setTimerType(Qt.TimerType.PreciseTimer)
    timer.setInterval(PERIOD_MS)
    timer.timeout.connect(beat)
    sec = QTimer()
    sec.setInterval(1000)
    sec.timeout.connect(second)
    clock.start()
    timer.start()
    sec.start()
    QTimer.singleShot(int((duration + warmup) * 1000), app.quit)
    app.exec()
    st = state.get("status")
    target = min(30.0, 0.9 * state.get("frame_hz", 0.0) or 30.0)
    window.close()

    lag_ms = 1e3 * np.asarray(lags)
    rates = np.diff(per_second)[int(warmup):] if len(per_second) > warmup + 1 else np.array([0])
    tracks = sum(v.updates for v in views() if isinstance(v, TrackView))
    report = {
        "duration_s": duration, "timer_period_ms": PERIOD_MS,
        "event_loop_lag_ms": {"p50": float(np.percentile(lag_ms, 50)),
                              "p99": float(np.percentile(lag_ms, 99)),
                              "max": float(lag_ms.max()), "n": int(lag_ms.size)},
        "imaging_display_updates_per_s": {"median": float(np.median(rates)),
                                          "min": float(rates.min()),
                                          "mean": float(rates.mean())},
        "track_view_updates": int(tracks),
        "engines": st.engines if st else {}, "sources": st.sources if st else {},
        "checks": {
            f"display updates >= {target:g}/s (median)": bool(np.median(rates) >= target),
            "event loop lag p99 <= 50 ms": bool(np.percentile(lag_ms, 99) <= 50),
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gui_bench.json").write_text(json.dumps(report, indent=2, default=float))
    lag = report["event_loop_lag_ms"]
    upd = report["imaging_display_updates_per_s"]
    print(f"event-loop lag: p50 {lag['p50']:.2f} ms  p99 {lag['p99']:.2f} ms  max {lag['max']:.1f} ms "
          f"({lag['n']} beats of {PERIOD_MS} ms)")
    print(f"imaging display updates/s: median {upd['median']:.1f}  min {upd['min']:.0f}  "
          f"mean {upd['mean']:.1f}")
    for check, ok in report["checks"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {check}")
    print(f"report: {out / 'gui_bench.json'}")
    return 0 if all(report["checks"].values()) else 1
