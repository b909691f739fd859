"""Tracking view: truth and every tracker's estimate in 2-D projections, the first
state component against time with uncertainty bands (±2σ where the engine gives a
covariance), and each tracker's squared error against time."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from ui.theme import TRUTH_COLOUR, engine_colour

SHOWN = 300  # most recent steps drawn
MARGIN = 0.1  # projections grow their range by this fraction when the data leave it
PAIRS = [(0, 1), (0, 2), (1, 2)]
_CIRCLE = np.stack([np.cos(np.linspace(0, 2 * np.pi, 48)), np.sin(np.linspace(0, 2 * np.pi, 48))])


def ellipse(mean2: np.ndarray, cov2: np.ndarray, k: float = 2.0) -> np.ndarray:
    """Points (2, 48) of the k-sigma ellipse of a 2-D Gaussian."""
    w, v = np.linalg.eigh(0.5 * (cov2 + cov2.T))
    return mean2[:, None] + k * (v * np.sqrt(np.clip(w, 0.0, None))) @ _CIRCLE


def curve(plot: pg.PlotItem, pen, name: str | None = None) -> pg.PlotCurveItem:
    """A bare curve (PlotCurveItem: far cheaper to update than a PlotDataItem)."""
    c = pg.PlotCurveItem(pen=pen, name=name)
    plot.addItem(c)
    return c


class _Tracker:
    """The curves of one tracker in every plot."""

    def __init__(self, view: TrackView, label: str, colour: str) -> None:
        pen = pg.mkPen(colour, width=1.5)
        dashed = pg.mkPen(colour, width=1, style=pg.QtCore.Qt.PenStyle.DashLine)
        self.proj = [curve(view.proj[i], pen) for i in range(3)]
        self.ellipses = [curve(view.proj[i], dashed) for i in range(3)]
        self.time = curve(view.time, pen, label)
        self.hi = pg.PlotCurveItem(pen=pg.mkPen(None))
        self.lo = pg.PlotCurveItem(pen=pg.mkPen(None))
        band = pg.mkColor(colour)
        band.setAlpha(60)
        self.band = pg.FillBetweenItem(self.hi, self.lo, brush=band)
        view.time.addItem(self.hi)
        view.time.addItem(self.lo)
        view.time.addItem(self.band)
        self.err = curve(view.err, pen)
        self.label = label


class TrackView(QWidget):
    """One sample stream and the trackers on it; `refresh(session)` pulls the newest.

    Redrawn at most `REFRESH_HZ` times a second: a trajectory of 400 points in five
    plots costs tens of milliseconds to draw on a small CPU, and the imaging panels
    (the live scan) must keep their 30+ updates a second.
    """

    REFRESH_HZ = 20.0  # one of the five plots per refresh: each plot at 4 Hz
    N_GROUPS = 5

    def __init__(self, stream: str, parent=None) -> None:
        super().__init__(parent)
        self.stream = stream
        self.updates = 0
        grid = QGridLayout()
        grid.setSpacing(2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(QLabel(f"<b>{stream}</b> — truth (white) and estimates; dashed: 2σ"))
        lay.addLayout(grid, 1)
        self._group = 0

        # One widget per plot: an update repaints that plot only, and the plots take
        # turns, so no display tick pays for redrawing all five.
        def plot(row: int, col: int, title: str, colspan: int = 1) -> pg.PlotItem:
            w = pg.PlotWidget(title=title)
            grid.addWidget(w, row, col, 1, colspan)
            return w.getPlotItem()

        names = ["x1", "x2", "x3"]
        self.proj = []
        # Axes are costly to redraw: projections keep their range until the data leave
        # it, and the time plots show time relative to the newest sample on a fixed axis.
        for c, (i, j) in enumerate(PAIRS):
            p = plot(0, c, f"{names[i]}–{names[j]}")
            p.setLabel("bottom", names[i])
            p.setLabel("left", names[j])
            p.disableAutoRange()
            self.proj.append(p)
        self.time = plot(1, 0, "x1 against time, ±2σ bands", colspan=2)
        self.time.setLabel("bottom", "t − now", units="s")
        self.time.addLegend(offset=(5, 5))
        self.time.disableAutoRange(axis="x")
        self.err = plot(1, 2, "squared error [dB]")
        self.err.setLabel("bottom", "t − now", units="s")
        self.err.disableAutoRange(axis="x")
        for p in (self.time, self.err):
            p.setClipToView(True)
        self._ranges: list[tuple[float, float, float, float] | None] = [None] * 3
        self._span = 0.0
        truth_pen = pg.mkPen(TRUTH_COLOUR, width=3)  # wide, under the estimates drawn on top
        self.truth_proj = [curve(self.proj[i], truth_pen) for i in range(3)]
        self.truth_time = curve(self.time, truth_pen, "truth")
        self.trackers: dict[str, _Tracker] = {}
        self._last_item = None

    def rebuild(self, engines: list[str]) -> None:
        if list(self.trackers) == engines:
            return
        for tr in self.trackers.values():
            for item in [*tr.proj, *tr.ellipses, tr.time, tr.hi, tr.lo, tr.band, tr.err]:
                if item.getViewBox() is not None:
                    item.getViewBox().removeItem(item)
        self.trackers = {label: _Tracker(self, label, engine_colour(k))
                         for k, label in enumerate(engines)}

    def _fit_projection(self, k: int, x: np.ndarray) -> None:
        """Grow a projection's range only when the data leave it (no axis redraw otherwise)."""
        i, j = PAIRS[k]
        lo_i, hi_i, lo_j, hi_j = x[:, i].min(), x[:, i].max(), x[:, j].min(), x[:, j].max()
        r = self._ranges[k]
        if r is None or lo_i < r[0] or hi_i > r[1] or lo_j < r[2] or hi_j > r[3]:
            pi, pj = MARGIN * (hi_i - lo_i + 1e-9), MARGIN * (hi_j - lo_j + 1e-9)
            r = (lo_i - pi, hi_i + pi, lo_j - pj, hi_j + pj)
            if self._ranges[k] is not None:
                o = self._ranges[k]
                r = (min(r[0], o[0]), max(r[1], o[1]), min(r[2], o[2]), max(r[3], o[3]))
            self._ranges[k] = r
            self.proj[k].setRange(xRange=r[:2], yRange=r[2:], padding=0)

    def _fit_time(self, span: float) -> None:
        if span > self._span * 1.05 or span < self._span * 0.5:
            self._span = span
            for p in (self.time, self.err):
                p.setXRange(-span, 0, padding=0.01)

    def refresh(self, session) -> bool:
        """Update the next of the five plots (projections, x1(t), error) in turn."""
        item = session.latest_item(self.stream)
        if item is None or item is self._last_item:
            return False
        self._last_item = item
        group, self._group = self._group, (self._group + 1) % self.N_GROUPS
        now = item.t
        items = session.recent_items(self.stream)[-SHOWN:]
        x = None
        if items and "state" in items[0].truth:
            x = np.array([s.truth["state"] for s in items])
            t = np.array([s.t for s in items]) - now
            if group < 3:
                i, j = PAIRS[group]
                self.truth_proj[group].setData(x[:, i], x[:, j])
                self._fit_projection(group, x)
            elif group == 3:
                self.truth_time.setData(t, x[:, 0])
                self._fit_time(-float(t[0]))
        for tr in self.trackers.values():
            self._draw_tracker(session, tr, group, now)
        self.updates += 1
        return True

    def _draw_tracker(self, session, tr: _Tracker, group: int, now: float) -> None:
        hist = session.bus.history(tr.label)[-SHOWN:]
        if not hist:
            return
        t = np.array([r.t for r in hist]) - now
        last = hist[-1]
        if group < 3:
            i, j = PAIRS[group]
            m = np.array([r.data[[i, j]] for r in hist])
            tr.proj[group].setData(m[:, 0], m[:, 1])
            if last.cov is not None:
                e = ellipse(last.data[[i, j]], last.cov[np.ix_([i, j], [i, j])])
                tr.ellipses[group].setData(e[0], e[1])
        elif group == 3:
            m0 = np.array([r.data[0] for r in hist])
            tr.time.setData(t, m0)
            if last.cov is not None:
                sd = np.sqrt(np.clip([r.cov[0, 0] for r in hist], 0.0, None))
                tr.hi.setData(t, m0 + 2 * sd)
                tr.lo.setData(t, m0 - 2 * sd)
        else:
            mse = np.array([r.mse if r.mse is not None else np.nan for r in hist])
            tr.err.setData(t, 10 * np.log10(np.maximum(np.nan_to_num(mse, nan=1e-12), 1e-12)))
