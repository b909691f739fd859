"""What a new user sees first: the default session in a window of a common screen size (pytest-qt)."""

from __future__ import annotations

import numpy as np
import pytest

from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig, default_config
from mbdl_app.session.studio import Studio
from ui.app import make_app
from ui.main_window import MainWindow
from ui.views.image_grid import ImageGridView, block_max, grid_columns, nice_length
from ui.views.track_view import TrackView

LEARNED = {"learned-optimizer", "unfolded", "dnn-aided"}


@pytest.fixture
def first_look(qtbot):
    """The main window on the default session (or `config`) at `size`, started as `mbdl` starts it."""
    make_app()
    windows = []

    def open_(size=(1600, 900), config=None):
        w = MainWindow(Studio(config or default_config()))
        qtbot.addWidget(w)
        w.setGeometry(0, 0, *size)
        w.show()
        w.guard("start", w.studio.start)
        windows.append(w)
        return w

    yield open_
    for w in windows:
        w.close()


def view_of(w, cls):
    return next(v for _, v in w.views.values() if isinstance(v, cls))


def shows_an_image(item) -> bool:
    """The ImageItem holds data that is neither empty nor constant."""
    image = item.image
    return image is not None and image.size > 0 and float(np.ptp(image)) > 0


def test_every_image_panel_of_the_default_session_shows_a_varying_image_after_seconds(first_look, qtbot):
    w = first_look()
    qtbot.waitUntil(lambda: bool(w.views), timeout=20000)
    grid = view_of(w, ImageGridView)
    assert list(grid.panels) == ["input", "svd-filter", "corona-ceus", "ulm-lista.map", "truth"]
    qtbot.waitUntil(lambda: all(shows_an_image(p.img) for p in grid.panels.values()), timeout=20000)
    qtbot.wait(3000)  # still so a few seconds on: the panels keep showing live data
    assert all(shows_an_image(p.img) for p in grid.panels.values())
    assert grid.panels["input"].data.shape == (48, 48)
    assert grid.panels["ulm-lista.map"].data.shape == (384, 384)  # the 8x finer grid


def test_the_default_session_shows_a_learned_engine_beside_its_baseline_in_each_modality(first_look, qtbot):
    w = first_look()
    qtbot.waitUntil(lambda: bool(w.views), timeout=20000)
    session = w.studio.session
    families = {label: session.engines[label].info.family
                for label in view_of(w, ImageGridView).panels if label in session.engines}
    families["ulm-lista"] = session.engines["ulm-lista"].info.family  # shown by its live map
    assert "model-based" in families.values() and LEARNED & set(families.values())
    trackers = list(view_of(w, TrackView).trackers)
    assert trackers == ["ekf", "kalmannet-lorenz"]
    assert [session.engines[t].info.family for t in trackers] == ["model-based", "dnn-aided"]
    # the session panel lists them checked, and applying it keeps the chain and the hops
    checked = [w.control.engines.cellWidget(r, 0) for r in range(w.control.engines.rowCount())]
    assert [b.text() for b in checked if b.isChecked()] == [
        "svd-filter", "corona-ceus", "ulm-lista", "ekf", "kalmannet-lorenz"]
    edited = w.control.edited_config()
    assert [(e.name, e.input, e.hop, e.params) for e in edited.engines] == [
        (e.name, e.input, e.hop, e.params) for e in default_config().engines]
    # the status bar says what runs: the frame size, rate and hop
    qtbot.waitUntil(lambda: "48x48@20Hz" in w.setup_label.text(), timeout=5000)
    assert "corona-ceus/20" in w.setup_label.text() and "lorenz @200Hz" in w.setup_label.text()


def test_the_window_opens_without_waiting_for_the_catalog_which_adds_the_other_engines_later(
        first_look, qtbot):
    w = first_look()
    table = w.control.engines
    assert table.rowCount() >= 5  # the session's engines at once
    qtbot.waitUntil(lambda: table.rowCount() > 5, timeout=180000)  # building every engine: slow
    rows = {table.cellWidget(r, 0).text(): table.cellWidget(r, 0) for r in range(table.rowCount())}
    assert "ukf" in rows and not rows["ukf"].isChecked() and rows["corona-ceus"].isChecked()
    assert "unfolded" in rows["corona-ceus"].toolTip()


def test_a_chained_engine_is_left_out_when_its_input_engine_is_unchecked(first_look, qtbot):
    w = first_look()
    w.control.set_engine_checked("corona-ceus", False)
    assert [e.label for e in w.control.edited_config().engines] == ["svd-filter", "ekf", "kalmannet-lorenz"]


@pytest.mark.parametrize("size, side", [((1600, 900), 200), ((1920, 1080), 250)])
def test_the_image_panels_fill_the_imaging_view_at_common_screen_sizes(first_look, qtbot, size, side):
    w = first_look(size)
    qtbot.waitUntil(lambda: bool(w.views), timeout=20000)
    grid = view_of(w, ImageGridView)
    qtbot.waitUntil(lambda: all(p.data is not None for p in grid.panels.values()), timeout=20000)
    qtbot.wait(300)  # the default layout is applied
    widths = [p.img.sceneBoundingRect().width() for p in grid.panels.values()]  # screen pixels
    assert min(widths) >= side, widths
    assert sum(widths) >= 0.8 * grid.canvas.width()  # one row of images across the view
    track_dock = next(d for d, v in w.views.values() if isinstance(v, TrackView))
    assert track_dock.height() >= 250  # the tracking view keeps room for its plots
    # the level histogram is collapsed behind a toggle, and narrow when shown
    assert not grid.hist.isVisible()
    grid.levels.click()
    assert grid.hist.isVisible() and grid.hist.width() <= 120
    qtbot.waitUntil(lambda: grid._columns == 5 and min(p.vb.width() for p in grid.panels.values()) > 0,
                    timeout=2000)


def test_the_super_resolved_map_has_a_scale_bar_in_micrometres_and_a_colour_bar(first_look, qtbot):
    w = first_look()
    qtbot.waitUntil(lambda: bool(w.views), timeout=20000)
    live_map = view_of(w, ImageGridView).panels["ulm-lista.map"]
    qtbot.waitUntil(lambda: live_map.data is not None and live_map.data.max() > 0, timeout=20000)
    # 48 pixels of 120 um: a field of 5760 um, a bar of 1000 um = 1000 / 120 input pixels
    assert live_map.scale_bar.text.toPlainText() == "1000 µm"
    assert live_map.scale_bar.size == pytest.approx(1000 / 120)
    assert live_map.legend.axis.labelText == "localizations per 15 µm pixel"  # 120 um / 8
    lo, hi = live_map.legend.values
    assert lo == 0 and hi == pytest.approx(float(live_map.data.max()), rel=0.02)  # sqrt(max count)


def test_microscopy_panels_carry_a_scale_bar_from_the_pixel_size_in_nm(first_look, qtbot):
    smlm = SourceConfig(name="smlm", uri="sim:smlm?seed=1&rate=50&size=32&density=2")
    config = SessionConfig(sources=[smlm], engines=[EngineConfig(name="smlm-fit")])
    w = first_look(config=config)
    qtbot.waitUntil(lambda: bool(w.views), timeout=20000)
    grid = view_of(w, ImageGridView)
    assert grid.microscopy and list(grid.panels) == ["input", "smlm-fit.map", "truth"]
    qtbot.waitUntil(lambda: all(p.data is not None for p in grid.panels.values()), timeout=20000)
    # 32 pixels of 100 nm: a field of 3.2 um, a bar of 0.5 um
    assert grid.panels["input"].scale_bar.text.toPlainText() == "0.5 µm"
    assert grid.panels["truth"].legend.axis.labelText == "filament fraction of each 12.5 nm pixel"
    assert grid.panels["smlm-fit.map"].scale_bar.size == pytest.approx(5.0)  # 0.5 um in 100 nm pixels


def test_the_grid_picks_the_column_count_that_makes_the_images_largest():
    assert grid_columns(5, 1300, 380) == 5  # a wide strip: one row
    assert grid_columns(6, 900, 900) in (2, 3)  # a square: two or three rows
    assert grid_columns(4, 300, 1400) == 1  # a tall column: one column
    assert [nice_length(v) for v in (1152.0, 0.64, 7.0)] == [1000.0, 0.5, 5.0]


def test_a_sparse_fine_grid_image_drawn_smaller_keeps_every_localization():
    image = np.zeros((16, 16), np.float32)
    image[[1, 6, 15], [0, 9, 14]] = [1.0, 2.0, 3.0]
    pooled = block_max(image, 4)
    assert pooled.shape == (4, 4) and np.count_nonzero(pooled) == 3 and pooled.max() == 3.0
