"""`run_gui()`: the desktop application (registered as the `mbdl.gui` entry point)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from PySide6.QtWidgets import QApplication

from mbdl_app.config import default_config, load_config
from mbdl_app.session.studio import Studio
from ui.main_window import MainWindow
from ui.theme import apply_dark

log = logging.getLogger(__name__)


def make_app() -> QApplication:
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("MBDL Studio")
    app.setOrganizationName("MBDL")
    apply_dark(app)
    return app


def build_window(config_path: str | Path | None = None, calibrated: Sequence[str | Path] = ()) -> MainWindow:
    """The main window on a config file or the default session, started; each `calibrated`
    artifact folder then added beside the running engines (as the Engines menu does)."""
    config = load_config(config_path) if config_path else default_config()
    window = MainWindow(Studio(config))
    window.guard("start", window.studio.start)
    for path in calibrated:
        window.add_calibrated_engine(path)
    return window


def run_gui(config_path: str | Path | None = None, calibrated: Sequence[str | Path] = ()) -> int:
    app = make_app()
    window = build_window(config_path, calibrated)

    def hook(exc_type, exc, tb):  # an uncaught slot exception: log it, keep running
        log.error("unexpected %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        window.statusBar().showMessage(f"unexpected error: {exc}", 15000)

    sys.excepthook = hook
    window.show()
    return app.exec()
