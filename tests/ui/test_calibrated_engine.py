"""The GUI's Engines > Add calibrated engine...: an artifact folder joins the running session as a
new panel of the imaging grid, beside the shipped engine, without a restart (offscreen, pytest-qt)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import exported_models
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.studio import Studio
from ui.app import make_app
from ui.main_window import MainWindow
from ui.views.image_grid import ImageGridView

CEUS = SessionConfig(sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=11&rate=40&height=32&width=64")],
                     engines=[EngineConfig(name="corona-ceus", hop=20)])


@pytest.fixture
def folder(tmp_path) -> Path:
    """The shipped CORONA copied out of exported_models/ under another name (as `mbdl calibrate` writes
    one; the card is not among the hashed files)."""
    out = tmp_path / "calibrated"
    shutil.copytree(Path(exported_models.ROOT) / "corona-ceus", out)
    card = json.loads((out / "card.json").read_text())
    (out / "card.json").write_text(json.dumps({**card, "name": "corona-ceus-cal-probe"}))
    return out


def grid(w: MainWindow) -> ImageGridView:
    return next(v for _, v in w.views.values() if isinstance(v, ImageGridView))


def shows(w: MainWindow, label: str) -> bool:
    panels = grid(w).panels if w.views else {}
    return label in panels and panels[label].data is not None


def test_add_calibrated_engine_puts_it_beside_the_shipped_one_in_the_running_session(qtbot, folder):
    make_app()
    w = MainWindow(Studio(CEUS))
    qtbot.addWidget(w)
    w.show()
    try:
        w.guard("start", w.studio.start)
        qtbot.waitUntil(lambda: shows(w, "corona-ceus"), timeout=20000)
        session = w.studio.session
        menu = next(a.menu() for a in w.menuBar().actions() if a.text().replace("&", "") == "Engines")
        assert w.add_calibrated_action in menu.actions()
        assert w.add_calibrated_engine(folder) == "corona-ceus-cal-probe"  # the slot, without the dialog
        qtbot.waitUntil(lambda: shows(w, "corona-ceus-cal-probe"), timeout=20000)
        assert w.studio.session is session  # hot-added: the same session, not a restart
        assert shows(w, "corona-ceus")
        assert {"corona-ceus", "corona-ceus-cal-probe"} <= set(grid(w).panels)
        assert w.add_calibrated_engine(folder.parent) is None  # no card: a status-bar message, no crash
        assert "not an artifact folder" in w.statusBar().currentMessage()
    finally:
        w.close()
