"""A calm dark theme: Fusion with a dark palette, matching pyqtgraph colours."""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication

BACKGROUND = "#1b1d21"
PANEL = "#24272c"
TEXT = "#d6d8dc"
ACCENT = "#4f9dde"
ERROR = "#e06c6c"
# one colour per engine, in the order they appear (colour-blind friendly, Okabe-Ito)
ENGINE_COLOURS = ["#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7"]
TRUTH_COLOUR = "#f5f5f5"
COLORMAPS = ["inferno", "viridis", "magma", "cividis", "CET-L1"]  # CET-L1 = grey


def apply_dark(app: QApplication) -> None:
    app.setStyle("Fusion")
    pal = QPalette()
    for role, colour in [
        (QPalette.ColorRole.Window, PANEL), (QPalette.ColorRole.WindowText, TEXT),
        (QPalette.ColorRole.Base, BACKGROUND), (QPalette.ColorRole.AlternateBase, PANEL),
        (QPalette.ColorRole.Text, TEXT), (QPalette.ColorRole.Button, PANEL),
        (QPalette.ColorRole.ButtonText, TEXT), (QPalette.ColorRole.Highlight, ACCENT),
        (QPalette.ColorRole.HighlightedText, "#ffffff"), (QPalette.ColorRole.ToolTipBase, PANEL),
        (QPalette.ColorRole.ToolTipText, TEXT), (QPalette.ColorRole.PlaceholderText, "#7d828a"),
    ]:
        pal.setColor(role, QColor(colour))
    app.setPalette(pal)
    pg.setConfigOptions(background=BACKGROUND, foreground=TEXT, imageAxisOrder="row-major",
                        antialias=False)


def engine_colour(k: int) -> str:
    return ENGINE_COLOURS[k % len(ENGINE_COLOURS)]
