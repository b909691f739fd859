"""Sparse-coding view: the newest measurement's true code beside each engine's, and each engine's
normalized error (NMSE, dB) against time, on a stream of compressed-sensing measurements (sim:cs)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from ui.theme import TRUTH_COLOUR, engine_colour
from ui.views.stream_view import StreamView

SHOWN = 300  # most recent measurements in the NMSE curve


class SparseView(StreamView):
    """One measurement stream and the sparse coders on it; `refresh(session)` pulls the newest."""

    def __init__(self, stream: str, parent=None) -> None:
        super().__init__(stream, "the newest code: truth (white) and each engine's", parent)
        lay = self.body
        w = pg.PlotWidget(title="code s of the newest measurement")
        self.codes = w.getPlotItem()
        self.codes.setLabel("bottom", "index")
        self.codes.addLegend(offset=(5, 5))
        lay.addWidget(w, 3)
        self.truth = pg.ScatterPlotItem(size=6, pen=pg.mkPen(TRUTH_COLOUR), brush=None, name="truth")
        self.codes.addItem(self.truth)
        w = pg.PlotWidget(title="NMSE [dB] = 10 log10 ||s_hat - s||^2 / ||s||^2")
        self.nmse = w.getPlotItem()
        self.nmse.setLabel("bottom", "t − now", units="s")
        self.nmse.showGrid(y=True, alpha=0.2)
        lay.addWidget(w, 2)
        self.estimates: dict[str, pg.ScatterPlotItem] = {}
        self.curves: dict[str, pg.PlotCurveItem] = {}
        self._last_item = None

    def rebuild(self, engines: list[str]) -> None:
        if list(self.curves) == engines:
            return
        for label in self.curves:
            self.codes.removeItem(self.estimates[label])
            self.nmse.removeItem(self.curves[label])
        self.estimates, self.curves = {}, {}
        for k, label in enumerate(engines):
            colour = engine_colour(k)
            self.estimates[label] = pg.ScatterPlotItem(size=4, pen=None, brush=pg.mkBrush(colour), name=label)
            self.codes.addItem(self.estimates[label])
            self.curves[label] = pg.PlotCurveItem(pen=pg.mkPen(colour, width=1.5))
            self.nmse.addItem(self.curves[label])

    def refresh(self, session) -> bool:
        item = session.latest_item(self.stream)
        if item is None or item is self._last_item:
            return False
        self._last_item = item
        code = item.truth.get("code")
        if code is not None:
            nz = np.flatnonzero(code)
            self.truth.setData(nz, np.asarray(code)[nz])
        # ||s||^2 / n of each recent measurement's code, by index: the NMSE's denominator
        power = {it.index: float(np.mean(np.square(it.truth["code"])))
                 for it in session.recent_items(self.stream)[-2 * SHOWN:] if "code" in it.truth}
        text = []
        for label, points in self.estimates.items():
            hist = session.bus.history(label)[-SHOWN:]
            if not hist:
                continue
            last = np.asarray(hist[-1].data)
            shown = np.flatnonzero(np.abs(last) > 1e-3 * max(np.abs(last).max(), 1e-12))
            points.setData(shown, last[shown])
            scored = [r for r in hist if r.mse is not None and power.get(r.index, 0.0) > 0]
            if scored:
                ratio = np.array([r.mse / power[r.index] for r in scored])
                nmse = 10 * np.log10(np.maximum(ratio, 1e-30))
                self.curves[label].setData(np.array([r.t for r in scored]) - item.t, nmse)
                text.append(f"{label} {nmse[-1]:.1f} dB")
        self.summary.setText(" · ".join(text))
        self.updates += 1
        return True
