"""Imaging view: a grid of synchronized panels for one frame stream.

Input (B-mode), every engine on the stream side by side, and the truth when known;
shared pan and zoom; shared levels through one histogram, or per-panel auto levels;
a colormap choice; on each panel its engine name, family, fps and latency. Panels
follow the session's engines: a new engine needs no change here.
"""

from __future__ import annotations

import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QCheckBox, QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from ui.theme import COLORMAPS

FLOOR_DB = -60.0


def bmode_db(chw: np.ndarray) -> np.ndarray:
    """Log-compressed magnitude (dB) of an (2, H, W) I/Q or (1, H, W) image, float32."""
    mag = np.hypot(chw[0], chw[1]) if chw.shape[0] == 2 else np.abs(chw[0])
    return (20.0 * np.log10(mag + 1e-6)).astype(np.float32, copy=False)


def camera_image(chw: np.ndarray) -> np.ndarray:
    """A camera frame (1, H, W) in counts (a microscope's ADU), linear, float32."""
    return chw[0].astype(np.float32, copy=False)


def fine_grid_image(chw: np.ndarray) -> np.ndarray:
    """A super-resolved image (1, H, W) of localization intensities or counts, shown on a square-root
    scale: a vessel crossed by few bubbles stays visible beside one crossed by many."""
    return np.sqrt(np.abs(chw[0])).astype(np.float32, copy=False)


class ImagePanel:
    """One titled image in the grid."""

    def __init__(self, layout: pg.GraphicsLayout, row: int, col: int, key: str, title: str) -> None:
        self.key = key
        self.label = layout.addLabel(title, row=2 * row, col=col, size="9pt")
        self.vb = layout.addViewBox(row=2 * row + 1, col=col, lockAspect=True, invertY=True,
                                    enableMenu=False)
        self.img = pg.ImageItem(axisOrder="row-major")
        self.vb.addItem(self.img)
        self.source_obj = None  # the item or result shown now (identity = "nothing new")
        self.data: np.ndarray | None = None

    def show(self, data: np.ndarray, levels: tuple[float, float] | None,
             extent: tuple[int, int] | None = None) -> None:
        """Draw `data` (H, W); `extent` (rows, cols) = the input's size when `data` is on a finer
        grid (a super-resolved map): it is drawn over the same area, so linked panels align."""
        rows, cols = extent or data.shape
        if self.data is None or self.data.shape != data.shape:  # first image: fit the view
            self.vb.setRange(xRange=(0, cols), yRange=(0, rows), padding=0.02)
        self.data = data
        if levels is None:  # per-panel levels: robust percentiles of this frame
            lo, hi = np.percentile(data, (1.0, 99.8))
            levels = (float(lo), float(max(hi, lo + 1e-3)))
        self.img.setImage(data, autoLevels=False, levels=levels)
        if extent is not None:
            self.img.setRect(0, 0, cols, rows)


class ImageGridView(QWidget):
    """All panels of one imaging stream; `refresh(session)` pulls the newest data."""

    REFRESH_HZ = 0.0  # every display tick

    def __init__(self, stream: str, parent=None) -> None:
        super().__init__(parent)
        self.stream = stream
        self.updates = 0  # display updates with new input (for `mbdl bench gui`)
        self.panels: dict[str, ImagePanel] = {}
        self._engines: list[str] = []
        self._levels_set = False
        self.microscopy = False

        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.colormap.setToolTip("Colormap of every panel")
        self.shared = QCheckBox("shared levels")
        self.shared.setChecked(True)
        self.shared.setToolTip("One set of levels for all panels (else: each panel auto-levels)")
        bar = QHBoxLayout()
        bar.addWidget(QLabel(f"<b>{stream}</b>"))
        bar.addStretch(1)
        bar.addWidget(QLabel("colormap"))
        bar.addWidget(self.colormap)
        bar.addWidget(self.shared)

        self.canvas = pg.GraphicsLayoutWidget()
        # The histogram follows a hidden copy of the input refreshed at 2 Hz: computing
        # it for every displayed frame would cost more than drawing the frame.
        self._hist_source = pg.ImageItem(axisOrder="row-major")
        self._hist_next = 0.0
        self.hist = pg.HistogramLUTWidget(gradientPosition="left")
        self.hist.setMinimumWidth(110)
        row = QHBoxLayout()
        row.addWidget(self.canvas, 1)
        row.addWidget(self.hist)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(bar)
        lay.addLayout(row, 1)

        self.colormap.currentTextChanged.connect(self.set_colormap)
        self.hist.item.sigLevelsChanged.connect(self._apply_shared_levels)
        self.hist.item.sigLookupTableChanged.connect(self._apply_lut)
        self.set_colormap(COLORMAPS[0])

    # ---- layout -----------------------------------------------------------------------
    def rebuild(self, engines: list[str], has_truth: bool, families: dict[str, str],
                microscopy: bool = False) -> None:
        """Panels: input, each engine, truth; only rebuilt when that list changes.

        `microscopy`: the input is a camera's counts (shown linear, not as B-mode) and the
        truth is the stream's static truth image (the filaments on the fine grid)."""
        keys = ["input", *engines, *(["truth"] if has_truth else [])]
        if keys == list(self.panels) and microscopy == self.microscopy:
            return
        self.microscopy = microscopy
        self.canvas.clear()
        self.panels.clear()
        n_cols = min(len(keys), 4)
        titles = ({"input": "input (camera, ADU)", "truth": "truth: filaments"} if microscopy
                  else {"input": "input (B-mode)", "truth": "truth: bubbles"})
        for k, key in enumerate(keys):
            title = titles.get(key, f"{key} · {families.get(key, '')}")
            self.panels[key] = ImagePanel(self.canvas.ci, k // n_cols, k % n_cols, key, title)
        first = self.panels["input"].vb
        for p in self.panels.values():
            if p.vb is not first:
                p.vb.setXLink(first)
                p.vb.setYLink(first)
        self.hist.item.setImageItem(self._hist_source)
        self._engines = list(engines)
        self._levels_set = False
        self._apply_lut()

    def set_colormap(self, name: str) -> None:
        cmap = pg.colormap.get(name)
        self.hist.item.gradient.setColorMap(cmap)
        if self.colormap.currentText() != name:
            self.colormap.setCurrentText(name)

    def _apply_lut(self, *_) -> None:
        lut = self.hist.item.getLookupTable(n=256)
        for p in self.panels.values():
            p.img.setLookupTable(lut)

    def _apply_shared_levels(self, *_) -> None:
        if self.shared.isChecked():
            lv = self.hist.item.getLevels()
            for p in self.panels.values():
                p.img.setLevels(lv)

    # ---- data ---------------------------------------------------------------------------
    def refresh(self, session) -> bool:
        """Show the newest input, results and truth; True if anything new was drawn."""
        item = session.latest_item(self.stream)
        if item is None:
            return False
        shared = self.shared.isChecked()
        new = False
        panel = self.panels.get("input")
        if panel is not None and panel.source_obj is not item and self.microscopy:
            panel.source_obj = item
            panel.show(camera_image(item.data), None)  # counts: its own robust levels
            truth = self.panels.get("truth")
            image = session.truth_image(self.stream)
            if truth is not None and truth.data is None and image is not None:
                truth.show(image, (0.0, 1.0), extent=item.data.shape[-2:])
            new = True
            self.updates += 1
        elif panel is not None and panel.source_obj is not item:
            data = bmode_db(item.data)
            if shared and not self._levels_set:
                top = float(np.percentile(data, 99.9))
                self.hist.item.setLevels(top + FLOOR_DB, top)
                self._levels_set = True
            panel.source_obj = item
            panel.show(data, self.hist.item.getLevels() if shared else None)
            now = time.monotonic()
            if now >= self._hist_next:
                self._hist_next = now + 0.5
                self._hist_source.setImage(data, autoLevels=False)
            truth = self.panels.get("truth")
            if truth is not None and "bubbles" in item.truth:
                truth.show(bmode_db(item.truth["bubbles"]), self.hist.item.getLevels() if shared else None)
            new = True
            self.updates += 1
        for label in self._engines:
            # a block engine publishes hop frames at once: play them paced (bus.paced)
            r = session.bus.paced(label) if session.hops.get(label, 1) > 1 else session.bus.latest(label)
            p = self.panels.get(label)
            if r is None or p is None or p.source_obj is r:
                continue
            p.source_obj = r
            frame = r.data[-1]
            if frame.shape[-2:] == item.data.shape[-2:]:
                p.show(bmode_db(frame), self.hist.item.getLevels() if shared else None)
            else:  # a finer grid (super-resolution): its own levels, drawn over the input's area
                fine = fine_grid_image(frame)  # mostly zeros: percentiles would saturate it
                p.show(fine, (0.0, max(float(fine.max()), 1e-6)), extent=item.data.shape[-2:])
            new = True
        return new

    def set_titles(self, stats: dict[str, dict]) -> None:
        """Panel titles with each engine's name, family, fps and latency (2 Hz)."""
        for label, p in self.panels.items():
            st = stats.get(label)
            if st is None:
                continue
            state = "" if st["state"] == "running" else f" · <b>{st['state'].upper()}</b>"
            mse = "" if not np.isfinite(st["mse_db"]) else f" · MSE {st['mse_db']:.1f} dB"
            text = (f"{label} · {st['family']} · {st['fps']:.0f} fps · "
                    f"p50 {st['latency_p50_ms']:.1f} ms{mse}{state}")
            if text != p.label.text:  # a new title re-lays out the grid: only on change
                p.label.setText(text, size="9pt")
