"""The main window: dockable views of the running session, controls, metrics, log.

Thin by design: all state lives in the Qt-free Studio; this window pulls the newest
results through the SessionBridge timer and turns every error into a status-bar
message and a log line, never a crash.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QSettings, Qt, QTimer
from PySide6.QtGui import QAction, QGuiApplication, QKeySequence
from PySide6.QtWidgets import QDockWidget, QFileDialog, QLabel, QMainWindow, QWidget

from mbdl_app.session.report import setup_line
from mbdl_app.session.studio import Studio, artifact_engine
from ui.bridge import SessionBridge
from ui.panels.control_panel import ControlPanel
from ui.panels.log_panel import LogPanel
from ui.views.control_view import ControlView
from ui.views.image_grid import ImageGridView
from ui.views.metrics_view import MetricsView
from ui.views.ser_view import SerView
from ui.views.sparse_view import SparseView
from ui.views.track_view import TrackView

log = logging.getLogger(__name__)
SETTINGS_VERSION = 3  # 3: a new default layout (imaging views sized for their images); old ones are dropped
DOCK_TITLE_PX = 24  # a dock's title bar


class MainWindow(QMainWindow):
    def __init__(self, studio: Studio, settings: QSettings | None = None) -> None:
        super().__init__()
        self.studio = studio
        self.settings = settings or QSettings("MBDL", "Studio")
        self.setWindowTitle("MBDL Studio")
        screen = QGuiApplication.primaryScreen().availableGeometry()
        self.resize(min(1600, screen.width()), min(1000, screen.height()))
        # the session column runs the full height; metrics and log sit under the views only
        self.setCorner(Qt.Corner.BottomLeftCorner, Qt.DockWidgetArea.LeftDockWidgetArea)
        # The views dock inside a stage (an inner main window in the centre), so they
        # take all the room the controls leave and can still be moved, split, floated.
        self.stage = QMainWindow()
        self.stage.setDockNestingEnabled(True)
        placeholder = QWidget()
        placeholder.setMaximumSize(0, 0)
        self.stage.setCentralWidget(placeholder)
        self.setCentralWidget(self.stage)

        self.views: dict[str, tuple[QDockWidget, QWidget]] = {}
        self.metrics = MetricsView()
        self.control = ControlPanel(studio)
        self.log_panel = LogPanel()
        metrics = self._dock("metrics", "Metrics", self.metrics, Qt.DockWidgetArea.BottomDockWidgetArea)
        control = self._dock("control", "Session", self.control, Qt.DockWidgetArea.LeftDockWidgetArea)
        logs = self._dock("log", "Log", self.log_panel, Qt.DockWidgetArea.BottomDockWidgetArea)
        self._fixed_docks = (control, metrics, logs)
        self.loop_view = ControlView()  # a stage-tracking session's control loop (hidden otherwise)
        self.loop_dock = self._dock("loop", "Control loop", self.loop_view,
                                    Qt.DockWidgetArea.RightDockWidgetArea)
        self.loop_dock.hide()
        self._laid_out = False
        self.rec_label = QLabel()
        self.setup_label = QLabel()  # what runs: each source's size and rate, each engine's hop
        self.statusBar().addWidget(self.setup_label, 1)
        self.statusBar().addPermanentWidget(self.rec_label)
        self._reported: set[str] = set()
        self._next_refresh: dict[str, float] = {}

        self.bridge = SessionBridge(studio, parent=self)
        self.bridge.tick.connect(self._refresh_views)
        self.bridge.stats.connect(self._on_stats)
        self.bridge.changed.connect(self._on_changed)
        self.control.apply_requested.connect(self._apply)
        self.control.record_toggled.connect(self._toggle_record)
        self.control.open_requested.connect(self._open_dialog)
        self.control.snapshot_requested.connect(self._snapshot_dialog)
        self._actions()
        self._restore()
        self.bridge.start()

    # ---- building ------------------------------------------------------------------
    def _dock(self, key: str, title: str, widget: QWidget, area, host: QMainWindow | None = None
              ) -> QDockWidget:
        host = host if host is not None else self
        dock = QDockWidget(title, host)
        dock.setObjectName(f"dock:{key}")
        dock.setWidget(widget)
        host.addDockWidget(area, dock)
        return dock

    def _actions(self) -> None:
        def act(text, keys, slot):
            a = QAction(text, self)
            a.setShortcut(QKeySequence(keys))
            a.setShortcutContext(Qt.ShortcutContext.ApplicationShortcut)
            a.triggered.connect(slot)
            self.addAction(a)
            return a

        act("Start", "F5", lambda: self._apply(None))
        act("Stop", "Shift+F5", lambda: self.guard("stop", self.studio.stop))
        act("Record", "Ctrl+R", lambda: self.control.record_btn.toggle())
        act("Open recording", "Ctrl+O", self._open_dialog)
        act("Play/pause", "Space", self.control.toggle_play)
        act("Step", "Right", lambda: self.studio.step(1))
        act("Back to live", "Ctrl+L", lambda: self.guard("back to live", self.studio.back_to_live))
        act("Snapshot", "Ctrl+Shift+S", self._snapshot_dialog)
        act("Quit", "Ctrl+Q", self.close)
        engines_menu = self.menuBar().addMenu("&Engines")
        self.add_calibrated_action = engines_menu.addAction("Add calibrated engine...")
        self.add_calibrated_action.triggered.connect(self._add_calibrated_dialog)

    def _sync_views(self) -> None:
        """One dock per stream: imaging grid for frames, track view for samples, SER view for symbols."""
        session = self.studio.session
        if session is None:
            return
        wanted = {}
        for name, stream in session.streams.items():
            labels = [e for e, src in session.bindings.items() if src == name]
            # a super-resolution engine is shown by its live map: its per-frame localizations
            # (one fine pixel per bubble) vanish at screen size
            labels = [session.maps[e].label if e in session.maps else e for e in labels]
            wanted[name] = (stream.info.kind, labels, stream.info)
        for name, (kind, labels, info) in wanted.items():
            symbols = "symbols" in info.truth_shapes or any(
                session.engines[e].info.task == "symbol-detection" for e in labels if e in session.engines)
            cls = (ImageGridView if kind == "frames" else SerView if symbols
                   else SparseView if "code" in info.truth_shapes else TrackView)
            entry = self.views.get(name)
            if entry is None or not isinstance(entry[1], cls):
                if entry is not None:
                    self.stage.removeDockWidget(entry[0])
                    entry[0].deleteLater()
                view = cls(name)
                title = {ImageGridView: "Imaging", TrackView: "Tracking", SerView: "Symbols",
                         SparseView: "Sparse coding"}[cls]
                dock = self._dock(f"view:{name}", f"{title}: {name}", view,
                                  Qt.DockWidgetArea.TopDockWidgetArea, host=self.stage)
                self.views[name] = entry = (dock, view)
                if kind == "frames":
                    view.set_colormap(self.settings.value("colormap", "inferno"))
            dock, view = entry
            dock.show()
            if kind == "frames":
                families = {e: session.engines[e].info.family if e in session.engines else "accumulated map"
                            for e in labels}
                microscopy = info.meta.get("modality") == "microscopy"
                view.rebuild(labels, "bubbles" in info.truth_shapes or session.truth_image(name) is not None,
                             families, microscopy=microscopy)
            else:
                view.rebuild(labels)
        for name, (dock, _) in self.views.items():
            if name not in wanted:
                dock.hide()
        self.loop_dock.setVisible(session.control is not None)
        if not self._laid_out and self.views:
            self._laid_out = True
            QTimer.singleShot(0, self, self._default_layout)  # cancelled if the window goes

    def _default_layout(self) -> None:
        """Views large on the right (imaging above tracking, each imaging view as tall as its images
        need), a narrow session column left, metrics and log in tabs below the views."""
        if getattr(self, "_pending_state", None) is not None:
            return  # the user's saved layout wins
        control, metrics, logs = self._fixed_docks
        self.tabifyDockWidget(metrics, logs)  # takes effect only once the window is shown
        metrics.raise_()
        shown = [(d, v) for d, v in self.views.values() if d.isVisible()]
        docks = [d for d, _ in shown]
        for upper, lower in zip(docks, docks[1:], strict=False):
            self.stage.splitDockWidget(upper, lower, Qt.Orientation.Vertical)
        control_w, metrics_h = min(300, max(240, self.width() // 6)), max(110, self.height() // 8)
        self.resizeDocks([control], [control_w], Qt.Orientation.Horizontal)
        self.resizeDocks([metrics], [metrics_h], Qt.Orientation.Vertical)
        # an imaging view gets the height its images need at the stage's width (at most 62%),
        # the other views share the rest
        stage_w = self.width() - control_w - 16
        stage_h = self.height() - self.statusBar().sizeHint().height() - metrics_h - 40
        imaging = {d: min(v.height_for(stage_w) + DOCK_TITLE_PX, 0.62 * stage_h)
                   for d, v in shown if isinstance(v, ImageGridView)}
        others = len(docks) - len(imaging)
        rest = max(stage_h - sum(imaging.values()), 200 * others) / max(others, 1)
        self.stage.resizeDocks(docks, [round(imaging.get(d, rest)) for d in docks], Qt.Orientation.Vertical)

    # ---- the pull loop ------------------------------------------------------------------
    def _refresh_views(self) -> None:
        session = self.studio.session
        if session is None:
            return
        now = time.monotonic()
        for name, (dock, view) in self.views.items():
            if dock.isVisible() and name in session.streams:
                if view.REFRESH_HZ and now < self._next_refresh.get(name, 0.0):
                    continue
                if view.REFRESH_HZ:
                    self._next_refresh[name] = now + 1.0 / view.REFRESH_HZ
                try:
                    view.refresh(session)
                except Exception as e:  # a view's bug must not take the app down
                    self.report(f"view {name}: {type(e).__name__}: {e}")
        if self.loop_dock.isVisible():
            self.loop_view.refresh(session)
        self.control.update_position()

    def _on_stats(self, st) -> None:
        self.metrics.update_stats(st)
        setup = setup_line(st)
        if setup != self.setup_label.text():
            self.setup_label.setText(setup)
        for _, view in self.views.values():
            if isinstance(view, ImageGridView):
                view.set_titles(st.engines)
        for name, e in st.engines.items():
            if e["state"] == "failed" and name not in self._reported:
                self._reported.add(name)
                self.report(e["error"] or f"engine {name} failed")
        for name, s in st.sources.items():
            key = f"source:{name}:{s['errors']}:{s['state']}"
            if s["state"] in ("failed", "error") and key not in self._reported:
                self._reported.add(key)
                self.report(s["error"] or f"source {name} {s['state']}")

    def _on_changed(self) -> None:
        self._reported.clear()
        self._sync_views()
        self.control.sync_state()
        st = self.studio
        self.rec_label.setText(f"● REC {st.recording_path.name}" if st.recording_path else "")
        self.rec_label.setStyleSheet("color: #e06c6c" if st.recording_path else "")

    # ---- actions -------------------------------------------------------------------------
    def report(self, message: str) -> None:
        """An error for the user: status bar + log; the app keeps running."""
        first = message.splitlines()[0] if message else "error"
        self.statusBar().showMessage(first, 15000)
        log.error("%s", first)

    def guard(self, what: str, fn, *args):
        """Run a studio action; any error becomes a one-line report."""
        try:
            return fn(*args)
        except Exception as e:
            self.report(f"{what}: {e}")
            return None

    def _apply(self, config) -> None:
        if config is None:  # Start: the current config
            self.guard("start", self.studio.start)
        else:
            self.guard("apply", lambda: (self.studio.apply(config), self.studio.start()))
        self.control.sync()

    def _toggle_record(self, on: bool) -> None:
        if not on:
            path = self.guard("stop recording", self.studio.stop_recording)
            if path:
                self.statusBar().showMessage(f"recorded {path}", 8000)
            return
        path, _ = QFileDialog.getSaveFileName(self, "Record session to", "session.h5", "HDF5 (*.h5)")
        if path:
            self.record_to(path)
        else:
            self.control.sync_state()

    def record_to(self, path: str | Path) -> None:
        self.guard("record", self.studio.start_recording, path)
        self.control.sync_state()

    def _open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open recording", "", "HDF5 (*.h5)")
        if path:
            self.open_recording(path)

    def open_recording(self, path: str | Path) -> None:
        self.guard("open recording", self.studio.open_recording, path)
        self.control.sync()

    def _add_calibrated_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add calibrated engine (an artifact folder from "
                                                "mbdl calibrate)")
        if path:
            self.add_calibrated_engine(path)

    def add_calibrated_engine(self, path: str | Path) -> str | None:
        """Run the artifact folder `path` (e.g. `mbdl calibrate`'s) beside the running engines, in a
        new panel of its stream's imaging grid, without restarting the session; its label or None."""
        label = self.guard("add engine", lambda: self.studio.add_engine(artifact_engine(path)))
        if label:
            self.statusBar().showMessage(f"added engine {label} ({path})", 8000)
        return label

    def _snapshot_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save snapshot", "snapshot.png", "PNG (*.png)")
        if path:
            self.snapshot(path)

    def snapshot(self, path: str | Path, widget: QWidget | None = None) -> bool:
        """Save the window (or one widget) as PNG."""
        ok = (widget or self).grab().save(str(path), "PNG")
        if not ok:
            self.report(f"snapshot: cannot write {path}")
        return ok

    # ---- settings -------------------------------------------------------------------------
    def _restore(self) -> None:
        if self.settings.value("version", 0, int) != SETTINGS_VERSION:
            return
        geo = self.settings.value("geometry")
        if geo is not None:
            self.restoreGeometry(geo)
        self._pending_state = (self.settings.value("state"), self.settings.value("stage_state"))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        super().showEvent(event)
        state = getattr(self, "_pending_state", None)
        if state is not None and state[0] is not None:  # view docks exist once the session runs
            QTimer.singleShot(300, self, lambda: (  # cancelled if the window goes first
                self.restoreState(state[0]),
                state[1] is not None and self.stage.restoreState(state[1])))
            self._pending_state = None

    def save_settings(self) -> None:
        self.settings.setValue("version", SETTINGS_VERSION)
        self.settings.setValue("geometry", self.saveGeometry())
        self.settings.setValue("state", self.saveState())
        self.settings.setValue("stage_state", self.stage.saveState())
        for _, view in self.views.values():
            if isinstance(view, ImageGridView):
                self.settings.setValue("colormap", view.colormap.currentText())
        self.settings.sync()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        self.save_settings()
        self.bridge.stop()
        self.guard("stop", self.studio.stop)
        self.log_panel.detach()
        super().closeEvent(event)
