"""Imaging view: a grid of synchronized panels for one frame stream.

Input (B-mode), every engine on the stream side by side, and the truth when known;
shared pan and zoom; shared levels (set through a histogram, collapsed by default), or
per-panel auto levels; a colormap choice; on each panel its engine name, family, fps and
latency. Panels follow the session's engines: a new engine needs no change here.

The panels fill the view: every panel is a cell of the same shape (a two-line title, the
image, a colour bar with the image's value range and unit), and the grid's column count is
chosen on every resize so that the images come out as large as the view allows. The input
and every image on a finer grid (a super-resolved map, a microscopy reconstruction) carry a
scale bar in micrometres when the stream's meta gives the pixel size.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from drivers.export import pixel_size_um
from ui.theme import COLORMAPS, TEXT

FLOOR_DB = -60.0
TITLE_SIZE = "10pt"
TITLE_PX = 40  # two lines: the engine and its family, then its rate and latency
LEGEND_PX = 44  # a horizontal colour bar, its tick labels and its unit
CHROME_PX = TITLE_PX + LEGEND_PX  # what a cell's height holds besides the image


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


def block_max(image: np.ndarray, f: int) -> np.ndarray:
    """`image` (H, W) reduced f-fold by the maximum of each f x f block (f divides H and W): a
    sparse fine-grid image drawn smaller than its pixels keeps every localization visible."""
    if f <= 1:
        return image
    h, w = image.shape
    return image.reshape(h // f, f, w // f, f).max(axis=(1, 3))


def grid_columns(n: int, width: float, height: float, aspect: float = 1.0) -> int:
    """Columns for `n` panels in a `width` x `height` view that make the images largest.

    `aspect` = image width / height; each cell's height also holds a title and a colour bar.
    Ties go to fewer columns."""
    best, cols = -1.0, 1
    for c in range(1, n + 1):
        side = min(width / c, (height / math.ceil(n / c) - CHROME_PX) * aspect)
        if side > best + 0.5:
            best, cols = side, c
    return cols


def nice_length(span: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above `span` (a scale bar's length)."""
    base = 10.0 ** math.floor(math.log10(span))
    return max(m * base for m in (1.0, 2.0, 5.0) if m * base <= span)


def pixel_text(um: float) -> str:
    """A length in micrometres as people write it: 15 µm, 12.5 nm."""
    return f"{um:.3g} µm" if um >= 1 else f"{1e3 * um:.3g} nm"


class PanelTitle(pg.LabelItem):
    """A panel's title: a fixed height, and never wider than its cell (a long title is clipped
    instead of widening its cell, so that every cell and every image keeps the same size)."""

    def __init__(self, text: str, **style) -> None:
        super().__init__(text, **style)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def updateMin(self) -> None:  # noqa: N802 - pyqtgraph override
        super().updateMin()
        self.setMinimumWidth(0)
        self.setMinimumHeight(TITLE_PX)
        self.setMaximumHeight(TITLE_PX)


class ImagePanel:
    """One titled image in the grid, in a cell of its own: title, image, colour bar."""

    def __init__(self, key: str, title: str) -> None:
        self.key = key
        self.cell = pg.GraphicsLayout()
        self.cell.setContentsMargins(0, 0, 0, 0)
        self.cell.setSpacing(0)
        self.label = PanelTitle(title, size=TITLE_SIZE)
        self.cell.addItem(self.label, row=0, col=0)
        self.vb = self.cell.addViewBox(row=1, col=0, lockAspect=True, invertY=True, enableMenu=False)
        self.img = pg.ImageItem(axisOrder="row-major")
        self.vb.addItem(self.img)
        self.legend = pg.ColorBarItem(values=(0.0, 1.0), width=8, interactive=False, orientation="horizontal")
        self.legend.setFixedHeight(LEGEND_PX)
        self.legend.axis.setStyle(hideOverlappingLabels=12)  # the end values may overhang a little
        self.cell.addItem(self.legend, row=2, col=0)
        self.cell.layout.setRowStretchFactor(1, 1)
        self._legend_state: tuple | None = None
        self.scale_bar: pg.ScaleBar | None = None
        self._scale_state: tuple | None = None
        self.shared = True  # drawn with the view's shared levels (False: a finer grid, its own)
        self.source_obj = None  # the item or result shown now (identity = "nothing new")
        self.data: np.ndarray | None = None

    def pooling(self, fine: tuple[int, int], extent: tuple[int, int]) -> int:
        """The block size (a divisor of the fine grid) that brings a fine-grid image of shape `fine`,
        drawn over `extent` input pixels, to about one block per screen pixel at the zoom now."""
        span = self.vb.viewRect().width()
        if span <= 0 or self.vb.width() <= 1:
            return 1
        fine_per_px = fine[1] / extent[1] * span / self.vb.width()
        want = math.ceil(fine_per_px - 1e-6)
        if want <= 1:
            return 1
        return next((f for f in range(want, 17) if fine[0] % f == 0 and fine[1] % f == 0), 1)

    def show(self, data: np.ndarray, levels: tuple[float, float] | None,
             extent: tuple[int, int] | None = None, unit: str | None = "dB", pool: int = 1) -> None:
        """Draw `data` (H, W); `extent` (rows, cols) = the input's size when `data` is on a finer
        grid (a super-resolved map): it is drawn over the same area, so the panels align, and
        `pool`-fold block maxima of it are what is drawn (`data` stays what the panel holds).
        `unit`: the colour bar then shows `levels` in it (None: the caller sets the bar)."""
        rows, cols = extent or data.shape
        if self.key == "input" and (self.data is None or self.data.shape != data.shape):
            self.vb.setRange(xRange=(0, cols), yRange=(0, rows), padding=0.02)  # the others follow
        self.data = data
        if levels is None:  # per-panel levels: robust percentiles of this frame
            lo, hi = np.percentile(data, (1.0, 99.8))
            levels = (float(lo), float(max(hi, lo + 1e-3)))
        self.img.setImage(block_max(data, pool), autoLevels=False, levels=levels)
        if extent is not None:
            self.img.setRect(0, 0, cols, rows)
        if unit is not None:
            self.show_legend(levels[0], levels[1], unit)

    def show_legend(self, lo: float, hi: float, unit: str, sqrt: bool = False) -> None:
        """The colour bar for values `lo`..`hi` in `unit`; `sqrt`: the image shows the square root of
        the values (0..`hi`), so the ticks sit at the square roots of the values they name.
        Redrawn only when the range moves by more than 1%."""
        state = self._legend_state
        if state is not None and state[2:] == (unit, sqrt) and \
                max(abs(lo - state[0]), abs(hi - state[1])) <= 0.01 * max(hi - lo, 1e-9):
            return
        self._legend_state = (lo, hi, unit, sqrt)
        axis = self.legend.axis
        if sqrt:
            top = math.sqrt(max(hi, 1e-12))
            self.legend.setLevels((0.0, top))
            axis.setTicks([[(0.0, "0"), (top / 2, f"{hi / 4:.3g}"), (top, f"{hi:.3g}")]])
        else:
            self.legend.setLevels((lo, max(hi, lo + 1e-6)))
            axis.setTicks(None)
        axis.setLabel(unit)

    def show_scale_bar(self, pixel_um: float, field_px: int) -> None:
        """A bar of a round number of micrometres (about a fifth of the field) at the bottom right;
        view coordinates are the input's pixels of `pixel_um` micrometres."""
        if self._scale_state == (pixel_um, field_px):
            return
        if self.scale_bar is not None:
            self.scale_bar.setParentItem(None)
        self._scale_state = (pixel_um, field_px)
        length_um = nice_length(field_px * pixel_um / 5)
        self.scale_bar = pg.ScaleBar(length_um / pixel_um, width=4, brush=TEXT, pen="#000000",
                                     offset=(-12, -12))
        self.scale_bar.text.setText(f"{length_um:g} µm", color=TEXT)
        self.scale_bar.text.fill = pg.mkBrush(0, 0, 0, 150)  # legible over a bright image
        self.scale_bar.setParentItem(self.vb)


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
        self._columns = 0
        self._following = False
        self._pixel_um: float | None = None  # the input's pixel (from the meta), once known; 0: unknown

        self.colormap = QComboBox()
        self.colormap.addItems(COLORMAPS)
        self.colormap.setToolTip("Colormap of every panel")
        self.shared = QCheckBox("shared levels")
        self.shared.setChecked(True)
        self.shared.setToolTip("One set of levels for all panels (else: each panel auto-levels)")
        self.levels = QToolButton()
        self.levels.setText("levels")
        self.levels.setCheckable(True)
        self.levels.setToolTip("Show the histogram of the input; drag its handles to set the shared levels")
        bar = QHBoxLayout()
        bar.addWidget(QLabel(f"<b>{stream}</b>"))
        bar.addStretch(1)
        bar.addWidget(QLabel("colormap"))
        bar.addWidget(self.colormap)
        bar.addWidget(self.shared)
        bar.addWidget(self.levels)

        self.canvas = pg.GraphicsLayoutWidget()
        self.canvas.ci.setContentsMargins(2, 2, 2, 2)
        self.canvas.ci.setSpacing(10)
        # The histogram follows a hidden copy of the input refreshed at 2 Hz while it is shown:
        # computing it for every displayed frame would cost more than drawing the frame.
        self._hist_source = pg.ImageItem(axisOrder="row-major")
        self._hist_next = 0.0
        self.hist = pg.HistogramLUTWidget(gradientPosition="left")
        self.hist.setFixedWidth(110)
        self.hist.setVisible(False)  # collapsed: the panels take the room
        row = QHBoxLayout()
        row.addWidget(self.canvas, 1)
        row.addWidget(self.hist)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addLayout(bar)
        lay.addLayout(row, 1)

        self.colormap.currentTextChanged.connect(self.set_colormap)
        self.levels.toggled.connect(self.hist.setVisible)
        self.canvas.ci.geometryChanged.connect(self._place_panels)
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
        titles = ({"input": "<b>input</b><br>camera, ADU", "truth": "<b>truth</b><br>filaments"} if microscopy
                  else {"input": "<b>input</b><br>B-mode", "truth": "<b>truth</b><br>bubbles"})
        for key in keys:
            title = titles.get(key, f"<b>{key}</b> · {families.get(key, '')}<br>")
            p = self.panels[key] = ImagePanel(key, title)
            p.vb.sigRangeChanged.connect(self._follow)
        self._columns = 0
        self._place_panels()
        self.hist.item.setImageItem(self._hist_source)
        self._engines = list(engines)
        self._levels_set = False
        self._pixel_um = None
        self._apply_lut()

    def height_for(self, width: float) -> int:
        """The height at which this view's panels, in one row (two beyond six panels), are as
        large as `width` lets them be (what the main window's default layout gives it)."""
        n = max(len(self.panels), 1)
        rows = 1 if n <= 6 else 2
        side = width / math.ceil(n / rows) - 10
        bar = self.layout().itemAt(0).sizeHint().height()
        return round(rows * (side + CHROME_PX + 10) + bar + 12)

    def _place_panels(self, *_) -> None:
        """Lay the cells out in the column count that makes the images largest at the canvas's
        size now, and fit the images to them again (called on every resize of the canvas);
        cells are moved, not rebuilt."""
        ci = self.canvas.ci
        cols = grid_columns(len(self.panels), ci.size().width(), ci.size().height())
        QTimer.singleShot(0, self, self._fit)  # once the layout has given the cells their sizes
        if cols == self._columns or not self.panels:
            return
        placed = [p.cell for p in self.panels.values() if p.cell in ci.items]
        for cell in placed:
            ci.layout.removeItem(cell)
        for k, p in enumerate(self.panels.values()):
            row, col = divmod(k, cols)
            if p.cell in placed:
                ci.layout.addItem(p.cell, row, col)
            else:
                ci.addItem(p.cell, row=row, col=col)
        self._columns = cols

    def _fit(self) -> None:
        """Every panel shows the whole input area (the input's view, which the others follow)."""
        panel = self.panels.get("input")
        if panel is not None and panel.data is not None:
            rows, cols = panel.data.shape
            panel.vb.setRange(xRange=(0, cols), yRange=(0, rows), padding=0.02)

    def _follow(self, vb: pg.ViewBox, *_) -> None:
        """Shared pan and zoom: every panel shows the centre of `vb` at its scale.

        Not pyqtgraph's axis links: those line up panels of different sizes as if they shared
        axes, and with locked aspect ratios their ranges then grow without end."""
        if self._following or vb.width() < 8 or vb.height() < 8:
            return  # a collapsed panel's scale means nothing
        self._following = True
        try:
            centre, (sx, sy) = vb.viewRect().center(), vb.viewPixelSize()
            for p in self.panels.values():
                if p.vb is not vb and p.vb.width() >= 8 and p.vb.height() >= 8:
                    w, h = p.vb.width() * sx / 2, p.vb.height() * sy / 2
                    p.vb.setRange(xRange=(centre.x() - w, centre.x() + w),
                                  yRange=(centre.y() - h, centre.y() + h), padding=0)
        finally:
            self._following = False

    def set_colormap(self, name: str) -> None:
        cmap = pg.colormap.get(name)
        self.hist.item.gradient.setColorMap(cmap)
        if self.colormap.currentText() != name:
            self.colormap.setCurrentText(name)

    def _apply_lut(self, *_) -> None:
        lut = self.hist.item.getLookupTable(n=256)
        cmap = self.hist.item.gradient.colorMap()
        for p in self.panels.values():
            p.img.setLookupTable(lut)
            p.legend.setColorMap(cmap)

    def _apply_shared_levels(self, *_) -> None:
        if self.shared.isChecked():
            lv = self.hist.item.getLevels()
            for p in self.panels.values():
                if p.shared and p.data is not None and not self.microscopy:
                    p.img.setLevels(lv)
                    p.show_legend(lv[0], lv[1], "dB")

    # ---- data ---------------------------------------------------------------------------
    def refresh(self, session) -> bool:
        """Show the newest input, results and truth; True if anything new was drawn."""
        item = session.latest_item(self.stream)
        if item is None:
            return False
        shared = self.shared.isChecked()
        new = False
        if self._pixel_um is None:
            pixel = pixel_size_um(session.streams[self.stream].info.meta)
            self._pixel_um = pixel[1] if pixel else 0.0
        extent = item.data.shape[-2:]
        panel = self.panels.get("input")
        if panel is not None and panel.source_obj is not item and self.microscopy:
            panel.source_obj = item
            panel.show(camera_image(item.data), None, unit="ADU")  # counts: its own robust levels
            self._scale_bar(panel, extent)
            truth = self.panels.get("truth")
            image = session.truth_image(self.stream)
            if truth is not None and truth.data is None and image is not None:
                truth.shared = False
                truth.show(image, (0.0, 1.0), extent=extent, unit="filament fraction of each "
                           + self._pixel_of(image, extent))
                self._scale_bar(truth, extent)
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
            self._scale_bar(panel, extent)
            now = time.monotonic()
            if now >= self._hist_next and self.hist.isVisible():
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
            if frame.shape[-2:] == extent:
                p.show(bmode_db(frame), self.hist.item.getLevels() if shared else None)
            else:  # a finer grid (super-resolution): its own levels, drawn over the input's area
                p.shared = False
                fine = fine_grid_image(frame)  # mostly zeros: percentiles would saturate it
                p.show(fine, (0.0, max(float(fine.max()), 1e-6)), extent=extent, unit=None,
                       pool=p.pooling(fine.shape, extent))
                what = "localizations" if label.endswith(".map") else "intensity"
                p.show_legend(0.0, float(np.abs(frame).max()), f"{what} per {self._pixel_of(frame, extent)}",
                              sqrt=True)
                self._scale_bar(p, extent)
            new = True
        return new

    def _scale_bar(self, panel: ImagePanel, extent: tuple[int, int]) -> None:
        if self._pixel_um:
            panel.show_scale_bar(self._pixel_um, extent[-1])

    def _pixel_of(self, image: np.ndarray, extent: tuple[int, int]) -> str:
        """`15 µm pixel`: the size of a pixel of `image`, a finer grid over the input's `extent`."""
        if not self._pixel_um:
            return "pixel"
        return f"{pixel_text(self._pixel_um * extent[-1] / image.shape[-1])} pixel"

    def set_titles(self, stats: dict[str, dict]) -> None:
        """Panel titles with each engine's name, family, fps and latency (2 Hz)."""
        for label, p in self.panels.items():
            # a live map shows its engine's rate and latency (its own are the map's refreshes)
            engine = label.removesuffix(".map")
            st = stats.get(engine if label.endswith(".map") and engine in stats else label)
            if st is None:
                continue
            state = "" if st["state"] == "running" else f" · <b>{st['state'].upper()}</b>"
            mse = "" if not np.isfinite(st["mse_db"]) else f" · MSE {st['mse_db']:.1f} dB"
            text = (f"<b>{label}</b> · {st['family']}{state}<br>"
                    f"{st['fps']:.0f} fps · p50 {st['latency_p50_ms']:.1f} ms{mse}")
            if text != p.label.text:  # a new title re-lays out the grid: only on change
                p.label.setText(text, size=TITLE_SIZE)
