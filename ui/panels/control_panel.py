"""Control panel: sources and engines (with backends) chosen at run time, start/stop,
recording, and the replay transport (play, pause, step, seek, speed, timeline).

The engines table lists the session's engines at once; the other engines that run live are
added when the catalog (which builds every engine once: tens of seconds on 2 cores) has been
made on a worker thread, so the window never waits for it.
"""

from __future__ import annotations

import atexit
import os
import threading

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSlider,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from engines.load import BACKENDS
from mbdl_app.catalog import catalog
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.studio import Studio

AUTO_SOURCE = "(first of its kind)"



_CATALOG_STOP = threading.Event()
_CATALOG_THREADS: list[threading.Thread] = []


@atexit.register
def _stop_catalog_threads() -> None:
    """At exit, a catalog thread finishes the engine it is building and stops: a daemon thread
    still inside ONNX Runtime or torch when the interpreter finalizes aborts the process
    ("terminate called without an active exception", exit code 134)."""
    _CATALOG_STOP.set()
    for thread in _CATALOG_THREADS:
        thread.join(60.0)

class ControlPanel(QWidget):
    """Edits a SessionConfig and asks the window to apply it; shows the transport in replay."""

    apply_requested = Signal(object)  # SessionConfig
    record_toggled = Signal(bool)
    open_requested = Signal()
    snapshot_requested = Signal()
    catalog_ready = Signal(object)  # list[CatalogEntry], emitted on the catalog thread (queued)

    def __init__(self, studio: Studio, parent=None) -> None:
        super().__init__(parent)
        self.studio = studio
        lay = QVBoxLayout(self)
        lay.setContentsMargins(4, 4, 4, 4)

        run = QHBoxLayout()
        self.start_btn = QPushButton("Start")
        self.stop_btn = QPushButton("Stop")
        self.record_btn = QPushButton("Record…")
        self.record_btn.setCheckable(True)
        self.snapshot_btn = QPushButton("Snapshot")
        for b in (self.start_btn, self.stop_btn, self.record_btn, self.snapshot_btn):
            run.addWidget(b)
        lay.addLayout(run)
        self.mode_label = QLabel()
        lay.addWidget(self.mode_label)

        src_box = QGroupBox("Sources")
        sl = QVBoxLayout(src_box)
        self.sources = QListWidget()
        self.sources.setMaximumHeight(110)  # a few sources; the engines below get the height
        sl.addWidget(self.sources)
        add = QHBoxLayout()
        self.new_uri = QLineEdit()
        self.new_uri.setPlaceholderText("name=URI, e.g. cam=camera:0 or sim:ceus?seed=2")
        self.add_btn = QPushButton("Add")
        add.addWidget(self.new_uri, 1)
        add.addWidget(self.add_btn)
        sl.addLayout(add)
        lay.addWidget(src_box)

        eng_box = QGroupBox("Engines")
        el = QVBoxLayout(eng_box)
        self.engines = QTableWidget(0, 3)
        self.engines.setHorizontalHeaderLabels(["engine", "source", "backend"])
        self.engines.verticalHeader().setVisible(False)
        self.engines.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        el.addWidget(self.engines)
        self.apply_btn = QPushButton("Apply sources and engines")
        el.addWidget(self.apply_btn)
        lay.addWidget(eng_box, 1)

        self.replay_box = QGroupBox("Replay")
        rl = QVBoxLayout(self.replay_box)
        self.open_btn = QPushButton("Open recording…")
        self.live_btn = QPushButton("Back to live")
        top = QHBoxLayout()
        top.addWidget(self.open_btn)
        top.addWidget(self.live_btn)
        rl.addLayout(top)
        transport = QHBoxLayout()
        self.play_btn = QPushButton("Pause")
        self.step_btn = QPushButton("Step")
        self.speed = QDoubleSpinBox()
        self.speed.setRange(0.1, 16.0)
        self.speed.setValue(1.0)
        self.speed.setSuffix("×")
        self.speed.setSingleStep(0.5)
        transport.addWidget(self.play_btn)
        transport.addWidget(self.step_btn)
        transport.addWidget(QLabel("speed"))
        transport.addWidget(self.speed)
        rl.addLayout(transport)
        self.timeline = QSlider(Qt.Orientation.Horizontal)
        self.timeline.setRange(0, 1000)
        rl.addWidget(self.timeline)
        lay.addWidget(self.replay_box)

        self.start_btn.clicked.connect(lambda: self.apply_requested.emit(None))
        self.stop_btn.clicked.connect(studio.stop)
        self.record_btn.toggled.connect(self.record_toggled.emit)
        self.snapshot_btn.clicked.connect(self.snapshot_requested.emit)
        self.add_btn.clicked.connect(self._add_source)
        self.new_uri.returnPressed.connect(self._add_source)
        self.apply_btn.clicked.connect(lambda: self.apply_requested.emit(self.edited_config()))
        self.open_btn.clicked.connect(self.open_requested.emit)
        self.live_btn.clicked.connect(studio.back_to_live)
        self.play_btn.clicked.connect(self.toggle_play)
        self.step_btn.clicked.connect(lambda: studio.step(1))
        self.speed.valueChanged.connect(studio.set_speed)
        self.timeline.sliderReleased.connect(lambda: studio.seek(self.timeline.value() / 1000))
        self._catalog: dict | None = None
        self.catalog_ready.connect(self._on_catalog)
        self.sync()
        QTimer.singleShot(0, self, self._load_catalog)  # after the session has started

    def _load_catalog(self) -> None:
        """Describe every engine on a low-priority worker thread; `catalog_ready` brings the rows."""
        def work():
            if hasattr(os, "setpriority"):  # Linux: a thread's nice value is its own
                try:
                    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
                except OSError:
                    pass
            entries = catalog(stop=_CATALOG_STOP)
            if _CATALOG_STOP.is_set():
                return
            try:
                self.catalog_ready.emit(entries)
            except RuntimeError:  # the panel was closed meanwhile
                pass

        thread = threading.Thread(target=work, name="catalog", daemon=True)
        _CATALOG_THREADS.append(thread)
        thread.start()

    def _on_catalog(self, entries) -> None:
        self._catalog = {e.name: e for e in entries}
        self._add_engine_rows([])

    # ---- config editing -------------------------------------------------------------------
    def _add_source(self) -> None:
        text = self.new_uri.text().strip()
        if not text:
            return
        name, _, uri = text.partition("=") if "=" in text.split(":", 1)[0] else ("", "", text)
        name = name or uri.split(":", 1)[-1].split("?", 1)[0].rsplit("/", 1)[-1] or "source"
        self._add_source_item(SourceConfig(name=name, uri=uri), True)
        self.new_uri.clear()
        self._refresh_source_combos()

    def _add_source_item(self, sc: SourceConfig, checked: bool) -> None:
        it = QListWidgetItem(f"{sc.name} = {sc.uri}")
        it.setData(Qt.ItemDataRole.UserRole, (sc.name, sc.uri))
        it.setFlags(it.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        it.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
        self.sources.addItem(it)

    def _source_names(self) -> list[str]:
        return [self.sources.item(i).data(Qt.ItemDataRole.UserRole)[0] for i in range(self.sources.count())]

    def _refresh_source_combos(self) -> None:
        names = [AUTO_SOURCE, *self._source_names()]
        for r in range(self.engines.rowCount()):
            if self._engine_row(r).get("input"):
                continue  # a chained engine reads its input engine, not a source
            combo: QComboBox = self.engines.cellWidget(r, 1)
            cur = combo.currentText()
            combo.clear()
            combo.addItems(names)
            combo.setCurrentText(cur if cur in names else AUTO_SOURCE)

    def edited_config(self) -> SessionConfig:
        sources = []
        for i in range(self.sources.count()):
            it = self.sources.item(i)
            if it.checkState() == Qt.CheckState.Checked:
                name, uri = it.data(Qt.ItemDataRole.UserRole)
                sources.append(SourceConfig(name=name, uri=uri))
        names = {s.name for s in sources}
        engines_ = []
        for r in range(self.engines.rowCount()):
            if not self.engines.cellWidget(r, 0).isChecked():
                continue
            row = {**self._engine_row(r), "backend": self.engines.cellWidget(r, 2).currentText()}
            if row.get("input"):  # a chained engine runs after its input, and only with it
                if row["input"] in {e.label for e in engines_}:
                    engines_.append(EngineConfig(**row))
                continue
            src = self.engines.cellWidget(r, 1).currentText()
            engines_.append(EngineConfig(**{**row, "source": src if src in names else None}))
        return SessionConfig(sources=sources, engines=engines_)

    def _engine_row(self, r: int) -> dict:
        """The engine config a row started from (its name, id, input, hop, params)."""
        return self.engines.cellWidget(r, 0).property("engine")

    def set_engine_checked(self, label: str, checked: bool) -> None:
        for r in range(self.engines.rowCount()):
            if EngineConfig(**self._engine_row(r)).label == label:
                self.engines.cellWidget(r, 0).setChecked(checked)

    def _add_engine_rows(self, configured: list[EngineConfig]) -> None:
        """Rows for `configured` (checked, in the session's order: a chained engine after its
        input), then, once the catalog is known, every other engine that runs live (unchecked)."""
        listed = {self._engine_row(r)["name"] for r in range(self.engines.rowCount())}
        rows = [(ec, True) for ec in configured]
        listed |= {ec.name for ec in configured}
        rows += [(EngineConfig(name=e.name), False) for e in (self._catalog or {}).values()
                 if e.kind in ("frames", "samples") and e.name not in listed]
        first = self.engines.rowCount()
        self.engines.setRowCount(first + len(rows))
        for r, (ec, checked) in enumerate(rows, start=first):
            box = QCheckBox(ec.label if ec.id is None else f"{ec.label} ({ec.name})")
            box.setChecked(checked)
            box.setProperty("engine", ec.model_dump(exclude_none=True))
            self.engines.setCellWidget(r, 0, box)
            src = QComboBox()
            if ec.input:
                src.addItem(f"← {ec.input}")
                src.setEnabled(False)
            self.engines.setCellWidget(r, 1, src)
            backend = QComboBox()
            backend.addItems(list(BACKENDS))
            backend.setCurrentText(ec.backend)
            self.engines.setCellWidget(r, 2, backend)
        self._refresh_source_combos()
        for r, (ec, _) in enumerate(rows, start=first):
            if ec.source:
                self.engines.cellWidget(r, 1).setCurrentText(ec.source)
        for r in range(self.engines.rowCount()):  # what each engine is, once the catalog knows
            row = self._engine_row(r)
            entry = (self._catalog or {}).get(row["name"])
            family = (entry.info.family if entry.info else entry.error) if entry else ""
            what = f"{entry.kind} engine · {family}" if entry else ""
            reads = f"reads {row['input']}'s output frames" if row.get("input") else ""
            self.engines.cellWidget(r, 0).setToolTip(" · ".join(t for t in (what, reads) if t) or row["name"])

    # ---- state -------------------------------------------------------------------------
    def sync(self) -> None:
        """Show the studio's current config, mode and recording state."""
        cfg = self.studio.config
        self.sources.clear()
        for sc in cfg.sources:
            self._add_source_item(sc, True)
        self.engines.setRowCount(0)
        self._add_engine_rows(cfg.engines)
        self.sync_state()

    def sync_state(self) -> None:
        st = self.studio
        self.start_btn.setEnabled(not st.running)
        self.stop_btn.setEnabled(st.running)
        self.record_btn.blockSignals(True)
        self.record_btn.setChecked(st.recording_path is not None)
        self.record_btn.setText("Stop recording" if st.recording_path else "Record…")
        self.record_btn.blockSignals(False)
        replay = st.mode == "replay"
        for w in (self.play_btn, self.step_btn, self.speed, self.timeline, self.live_btn):
            w.setEnabled(replay and st.running)
        self.play_btn.setText("Play" if st.paused else "Pause")
        rec = f" · recording to {st.recording_path.name}" if st.recording_path else ""
        mode = f"replay of {st.replay_path.name}" if replay else "live"
        self.mode_label.setText(f"{'running' if st.running else 'stopped'} · {mode}{rec}")

    def toggle_play(self) -> None:
        if self.studio.paused:
            self.studio.play()
        else:
            self.studio.pause()

    def update_position(self) -> None:
        pos = self.studio.position()
        if pos is not None and not self.timeline.isSliderDown():
            self.timeline.setValue(round(1000 * pos))
