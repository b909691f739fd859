"""The symbol-stream view on a real comms session, offscreen (pytest-qt)."""

from __future__ import annotations

import threading

import numpy as np

from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.studio import Studio
from ui.app import make_app
from ui.main_window import MainWindow
from ui.views.ser_view import SerView, sliding_ser
from ui.views.track_view import TrackView

COMMS = SessionConfig(
    sources=[SourceConfig(name="isi", uri="sim:isi?gamma=0.2&snr=6&rate=40&seed=3"),
             SourceConfig(name="lorenz", uri="sim:lorenz?seed=4&rate=100")],
    engines=[EngineConfig(name="bcjr", source="isi"), EngineConfig(name="bcjrnet-isi", source="isi"),
             EngineConfig(name="ekf", source="lorenz")])


def test_the_ser_view_draws_every_detectors_sliding_ser_and_the_metrics_table_shows_it(qtbot):
    make_app()
    w = MainWindow(Studio(COMMS))
    qtbot.addWidget(w)
    w.show()
    try:
        w.guard("start", w.studio.start)
        qtbot.waitUntil(lambda: "isi" in w.views, timeout=10000)
        view = w.views["isi"][1]
        assert isinstance(view, SerView) and isinstance(w.views["lorenz"][1], TrackView)
        assert w.views["isi"][0].windowTitle() == "Symbols: isi"

        def drawn():
            curves = [view.curves[k].getData()[0] for k in ("bcjr", "bcjrnet-isi")]
            return all(c is not None and len(c) >= 3 for c in curves)

        qtbot.waitUntil(drawn, timeout=10000)
        x, y = view.curves["bcjr"].getData()
        assert np.all(x <= 0) and np.all(np.isfinite(y)) and np.all(y <= 0)  # log10 SER, times before now
        assert view.points.data.size == 500 and "bcjr" in view.summary.text()
        qtbot.waitUntil(lambda: w.metrics.engines.rowCount() == 3
                        and w.metrics.engines.item(0, 11) is not None
                        and w.metrics.engines.item(0, 11).text() not in ("", "–"), timeout=5000)
        table = w.metrics.engines
        header = [table.horizontalHeaderItem(c).text() for c in range(table.columnCount())]
        assert header[-1] == "SER"
    finally:
        w.close()
        # the session panel builds the engine catalog on a daemon thread; left running into the
        # interpreter's exit it dies inside ONNX Runtime/torch and the process aborts (rc 134)
        for t in threading.enumerate():
            if t.name == "catalog":
                t.join(120)


def test_the_sliding_ser_averages_the_last_blocks():
    rates = np.array([0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(sliding_ser(rates, window=2), [0.0, 0.05, 0.15, 0.25])
