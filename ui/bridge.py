"""SessionBridge: the GUI's pull loop over the Qt-free Studio.

A QTimer on the GUI thread pulls the newest results at display rate (never every
frame, never from a worker thread) and emits `tick`; views redraw what changed.
Stats arrive at 2 Hz on `stats`. Studio changes (start, stop, switch, replay) are
turned into `changed` on the GUI thread.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer, Signal

from mbdl_app.session.studio import Studio


class SessionBridge(QObject):
    tick = Signal()
    stats = Signal(object)  # SessionStatus
    changed = Signal()

    def __init__(self, studio: Studio, fps: float = 40.0, stats_hz: float = 2.0, parent=None) -> None:
        super().__init__(parent)
        self.studio = studio
        self._timer = QTimer(self)
        self._timer.setInterval(max(1, round(1000 / fps)))
        self._timer.timeout.connect(self._on_timer)
        self._stats_period = 1.0 / stats_hz
        self._next_stats = 0.0
        # Studio listeners may run on any thread: a queued signal brings them here.
        studio.listeners.append(self.changed.emit)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    def _on_timer(self) -> None:
        if self.studio.session is None:
            return
        self.tick.emit()
        now = time.monotonic()
        if now >= self._next_stats:
            self._next_stats = now + self._stats_period
            self.stats.emit(self.studio.session.status())
