"""Tracking view: truth and every tracker's estimate in 2-D projections, the first
state component against time with uncertainty bands (±2σ where the engine gives a
covariance), and each tracker's squared error against time."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from ui.theme import TRUTH_COLOUR, engine_colour

SHOWN = 400  # most recent steps drawn
PAIRS = [(0, 1), (0, 2), (1, 2)]
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 48)), np.sin(np.linspace(0, 2 * np.pi, 48))])


def ellipse(mean2: np.ndarray, cov2: np.ndarray, k: float = 2.0) -> np.ndarray:
    """Points (2, 48) of the k-sigma ellipse of a 2-D Gaussian."""
    w, v = np.linalg.eigh(0.5 * (cov2 + cov2.T))
    return mean2[:, None] + k * (v * np.sqrt(np.clip(w, 0.0, None))) @ _CIRCLE


class _Tracker:
    """The curves of one tracker in every plot."""

    def __init__(self, view: TrackView, label: str, colour: str) -> None:
        pen = pg.mkPen(colour, width=1.5)
        self.proj = [view.proj[i].plot(pen=pen, name=label) for i in range(3)]
        self.ellipses = [view.proj[i].plot(pen=pg.mkPen(colour, width=1, style=pg.QtCore.Qt.DashLine))
                         for i in range(3)]
        self.time = view.time.plot(pen=pen, name=label)
        self.hi = pg.PlotDataItem(pen=pg.mkPen(None))
        self.lo = pg.PlotDataItem(pen=pg.mkPen(None))
        band = pg.mkColor(colour)
        band.setAlpha(60)
        self.band = pg.FillBetweenItem(self.hi, self.lo, brush=band)
        view.time.addItem(self.hi)
        view.time.addItem(self.lo)
        view.time.addItem(self.band)
        self.err = view.err.plot(pen=pen, name=label)
        self.last = None


class TrackView(QWidget):
    """One sample stream and the trackers on it; `refresh(session)` pulls the newest."""

    def __init__(self, stream: str, parent=None) -> None:
        super().__init__(parent)
        self.stream = stream
        self.updates = 0
        self.canvas = pg.GraphicsLayoutWidget()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(QLabel(f"<b>{stream}</b> — truth (white) and estimates; dashed: 2σ"))
        lay.addWidget(self.canvas, 1)
        names = ["x1", "x2", "x3"]
        self.proj = []
        for c, (i, j) in enumerate(PAIRS):
            p = self.canvas.addPlot(row=0, col=c, title=f"{names[i]}–{names[j]}")
            p.setLabel("bottom", names[i])
            p.setLabel("left", names[j])
            self.proj.append(p)
        self.time = self.canvas.addPlot(row=1, col=0, colspan=2, title="x1 against time, ±2σ bands")
        self.time.setLabel("bottom", "t", units="s")
        self.time.addLegend(offset=(5, 5))
        self.err = self.canvas.addPlot(row=1, col=2, title="squared error [dB]")
        self.err.setLabel("bottom", "t", units="s")
        truth_pen = pg.mkPen(TRUTH_COLOUR, width=3)  # wide, under the estimates drawn on top
        self.truth_proj = [self.proj[i].plot(pen=truth_pen) for i in range(3)]
        self.truth_time = self.time.plot(pen=truth_pen, name="truth")
        self.trackers: dict[str, _Tracker] = {}
        self._last_item = None

    def rebuild(self, engines: list[str]) -> None:
        if list(self.trackers) == engines:
            return
        for tr in self.trackers.values():
            for item in [*tr.proj, *tr.ellipses, tr.time, tr.hi, tr.lo, tr.band, tr.err]:
                item.getViewBox().removeItem(item) if item.getViewBox() else None
        self.trackers = {label: _Tracker(self, label, engine_colour(k))
                         for k, label in enumerate(engines)}

    def refresh(self, session) -> bool:
        item = session.latest_item(self.stream)
        if item is None or item is self._last_item:
            return False
        self._last_item = item
        items = session.recent_items(self.stream)[-SHOWN:]
        if items and "state" in items[0].truth:
            x = np.array([s.truth["state"] for s in items])
            t = np.array([s.t for s in items])
            for k, (i, j) in enumerate(PAIRS):
                self.truth_proj[k].setData(x[:, i], x[:, j])
            self.truth_time.setData(t, x[:, 0])
        for label, tr in self.trackers.items():
            hist = session.bus.history(label)[-SHOWN:]
            if not hist:
                continue
            m = np.array([r.data for r in hist])
            t = np.array([r.t for r in hist])
            for k, (i, j) in enumerate(PAIRS):
                tr.proj[k].setData(m[:, i], m[:, j])
            tr.time.setData(t, m[:, 0])
            last = hist[-1]
            if last.cov is not None:
                sd = np.sqrt(np.clip([r.cov[0, 0] for r in hist], 0.0, None))
                tr.hi.setData(t, m[:, 0] + 2 * sd)
                tr.lo.setData(t, m[:, 0] - 2 * sd)
                for k, (i, j) in enumerate(PAIRS):
                    e = ellipse(last.data[[i, j]], last.cov[np.ix_([i, j], [i, j])])
                    tr.ellipses[k].setData(e[0], e[1])
            mse = np.array([r.mse if r.mse is not None else np.nan for r in hist])
            with np.errstate(divide="ignore"):
                tr.err.setData(t, 10 * np.log10(np.maximum(mse, 1e-12)), connect="finite")
        self.updates += 1
        return True
