"""The control-loop panel on the shipped stage-tracking session, offscreen (pytest-qt)."""

from __future__ import annotations

import threading

import numpy as np

from mbdl_app.config import load_config
from mbdl_app.session.studio import Studio
from ui.app import make_app
from ui.main_window import MainWindow
from ui.panels.control_panel import _CATALOG_STOP


def test_control_panel_shows_live_J_and_switches_the_estimator(qtbot):
    make_app()
    w = MainWindow(Studio(load_config("stage")))
    qtbot.addWidget(w)
    w.show()
    try:
        w.guard("start", w.studio.start)
        qtbot.waitUntil(lambda: w.loop_dock.isVisible() and w.loop_view.updates >= 2, timeout=15000)
        loop = w.studio.session.control
        assert w.loop_view.estimator.currentText() == "kf" and w.loop_view.controller.currentText() == "lqr"
        k, c = w.loop_view.cost_curve.getData()
        assert len(k) >= 3 and np.all(np.isfinite(c))
        w.loop_view.estimator.setCurrentText("kf-mismatched")
        assert loop.estimator_name == "kf-mismatched"
        w.loop_view.controller.setCurrentText("mpc")
        assert loop.controller_name == "mpc"
        n = len(loop.history)
        qtbot.waitUntil(lambda: len(loop.history) >= n + 12, timeout=10000)  # past the burn-in again
        qtbot.waitUntil(lambda: "kf-mismatched + mpc: J = " in w.loop_view.summary.text()
                        and "J = –" not in w.loop_view.summary.text(), timeout=5000)
    finally:
        w.close()
        # the session panel's catalog thread (see test_ser_view.py): stopped between two engines
        # rather than waited for (it builds every engine: ~30 s on a loaded machine)
        _CATALOG_STOP.set()
        try:
            for t in threading.enumerate():
                if t.name == "catalog":
                    t.join(120)
        finally:
            _CATALOG_STOP.clear()
