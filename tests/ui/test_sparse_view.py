"""The sparse-coding view on a live compressed-sensing stream (sim:cs + lista-cs), offscreen."""

from __future__ import annotations

import threading

import numpy as np

from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.studio import Studio
from ui.app import make_app
from ui.main_window import MainWindow
from ui.views.sparse_view import SparseView

CS = SessionConfig(sources=[SourceConfig(name="cs", uri="sim:cs?operator=lista-cs&rate=20&seed=2")],
                   engines=[EngineConfig(name="lista-cs", source="cs", backend="onnxruntime")])


def test_the_sparse_view_draws_the_true_and_estimated_codes_and_the_nmse(qtbot):
    make_app()
    w = MainWindow(Studio(CS))
    qtbot.addWidget(w)
    w.show()
    try:
        w.guard("start", w.studio.start)
        qtbot.waitUntil(lambda: "cs" in w.views, timeout=10000)
        dock, view = w.views["cs"]
        assert isinstance(view, SparseView) and dock.windowTitle() == "Sparse coding: cs"

        def drawn():
            x, _ = view.curves["lista-cs"].getData()
            return x is not None and len(x) >= 3

        qtbot.waitUntil(drawn, timeout=15000)
        t, nmse = view.curves["lista-cs"].getData()
        # lista-cs on its own noiseless benchmark: -36.8 dB NMSE over 1000 held-out problems
        assert np.all(t <= 0) and np.median(nmse) < -25, nmse
        truth_x, truth_y = view.truth.getData()
        assert 10 <= len(truth_x) <= 100 and np.all(truth_y != 0)  # ~50 of 500 entries are nonzero
        assert len(view.estimates["lista-cs"].getData()[0]) > 0 and "lista-cs" in view.summary.text()
    finally:
        w.close()
        for t in threading.enumerate():  # the session panel's catalog thread (see test_ser_view.py)
            if t.name == "catalog":
                t.join(120)
