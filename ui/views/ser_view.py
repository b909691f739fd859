"""Symbol-stream view: each detector's symbol error rate over a sliding window against time,
and the received samples of the newest block (coloured by the transmitted symbol)."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg

from ui.theme import TRUTH_COLOUR, engine_colour
from ui.views.stream_view import StreamView

WINDOW_BLOCKS = 10  # the sliding window of the SER curve, in blocks (5,000 symbols of 500)
SHOWN = 400  # most recent blocks drawn
FLOOR = 1e-5  # a window without errors is drawn here (the log axis has no zero)


def sliding_ser(rates: np.ndarray, window: int = WINDOW_BLOCKS) -> np.ndarray:
    """The mean of the last `window` per-block error rates at every block (fewer at the start)."""
    c = np.cumsum(np.concatenate(([0.0], rates)))
    k = np.arange(1, len(rates) + 1)
    lo = np.maximum(k - window, 0)
    return (c[k] - c[lo]) / (k - lo)


class SerView(StreamView):
    """One symbol stream and the detectors on it; `refresh(session)` pulls the newest results."""

    def __init__(self, stream: str, parent=None) -> None:
        super().__init__(stream, f"symbol error rate over the last {WINDOW_BLOCKS} blocks", parent)
        lay = self.body
        w = pg.PlotWidget(title="SER (sliding window)")
        self.ser = w.getPlotItem()
        self.ser.setLogMode(y=True)
        self.ser.setLabel("bottom", "t − now", units="s")
        self.ser.addLegend(offset=(5, 5))
        self.ser.showGrid(y=True, alpha=0.2)
        lay.addWidget(w, 3)
        w = pg.PlotWidget(title="received samples of the newest block (by transmitted symbol)")
        self.samples = w.getPlotItem()
        self.samples.setLabel("bottom", "symbol")
        lay.addWidget(w, 2)
        self.points = pg.ScatterPlotItem(size=3, pen=None)
        self.samples.addItem(self.points)
        self.curves: dict[str, pg.PlotCurveItem] = {}
        self._brushes = (pg.mkBrush(TRUTH_COLOUR), pg.mkBrush(engine_colour(1)))
        self._last_item = None

    def rebuild(self, engines: list[str]) -> None:
        if list(self.curves) == engines:
            return
        for c in self.curves.values():
            self.ser.removeItem(c)
        self.ser.legend.clear()
        self.curves = {}
        for k, label in enumerate(engines):
            c = pg.PlotCurveItem(pen=pg.mkPen(engine_colour(k), width=1.5), name=label)
            self.ser.addItem(c)
            self.curves[label] = c

    def refresh(self, session) -> bool:
        item = session.latest_item(self.stream)
        if item is None or item is self._last_item:
            return False
        self._last_item = item
        now = item.t
        text = []
        for label, c in self.curves.items():
            hist = [r for r in session.bus.history(label)[-SHOWN:] if r.ser is not None]
            if not hist:
                continue
            ser = sliding_ser(np.array([r.ser for r in hist]))
            c.setData(np.array([r.t for r in hist]) - now, np.log10(np.maximum(ser, FLOOR)))
            text.append(f"{label} {ser[-1]:.1e}")
        self.summary.setText(" · ".join(text))
        symbols = item.truth.get("symbols")
        y = np.asarray(item.value)
        brushes = None
        if symbols is not None:
            brushes = np.where(np.asarray(symbols) == np.max(symbols), *self._brushes)
        self.points.setData(np.arange(len(y)), y, brush=brushes)
        self.updates += 1
        return True
