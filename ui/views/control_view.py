"""The control-loop panel of a stage-tracking session (mbdl_app/session/stage_control.py): the
estimator and controller choices, the live closed-loop cost J, and the particle's measured and
estimated offset from the field's centre."""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QComboBox, QFormLayout, QLabel, QVBoxLayout, QWidget

from mbdl_app.session.stage_control import CONTROLLERS, ESTIMATORS
from ui.theme import TRUTH_COLOUR, engine_colour

SHOWN = 600  # most recent frames drawn


class ControlView(QWidget):
    """`refresh(session)` pulls the loop's newest steps (the GUI thread; the loop runs on the
    acquisition thread and its history is a bounded deque). Changing a combo box switches the
    running loop's estimator / controller; an error (e.g. a missing artifact) is shown, the old
    choice stays."""

    REFRESH_HZ = 5.0

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.loop = None
        self.updates = 0
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        form = QFormLayout()
        self.estimator = QComboBox()
        self.estimator.addItems(ESTIMATORS)
        self.controller = QComboBox()
        self.controller.addItems(CONTROLLERS)
        form.addRow("Estimator", self.estimator)
        form.addRow("Controller", self.controller)
        lay.addLayout(form)
        self.summary = QLabel("no control loop in this session")
        self.summary.setWordWrap(True)
        lay.addWidget(self.summary)
        w = pg.PlotWidget(title="closed-loop cost")
        self.cost_plot = w.getPlotItem()
        self.cost_plot.setLabel("bottom", "frame")
        self.cost_plot.addLegend(offset=(5, 5))
        self.cost_plot.showGrid(y=True, alpha=0.2)
        self.cost_curve = self.cost_plot.plot(pen=pg.mkPen("#888888", width=1), name="cost c_t")
        self.J_curve = self.cost_plot.plot(pen=pg.mkPen(engine_colour(0), width=2), name="J (running mean)")
        lay.addWidget(w, 3)
        w = pg.PlotWidget(title="offset from the field's centre, x (um)")
        self.offset_plot = w.getPlotItem()
        self.offset_plot.addLegend(offset=(5, 5))
        self.measured_curve = self.offset_plot.plot(pen=None, symbol="o", symbolSize=3,
                                                    symbolBrush=TRUTH_COLOUR, name="measured")
        self.estimate_curve = self.offset_plot.plot(pen=pg.mkPen(engine_colour(1), width=1.5),
                                                    name="estimate")
        lay.addWidget(w, 2)
        self.estimator.currentTextChanged.connect(lambda name: self._switch("estimator", name))
        self.controller.currentTextChanged.connect(lambda name: self._switch("controller", name))

    def _switch(self, what: str, name: str) -> None:
        loop = self.loop
        if loop is None or name == getattr(loop, f"{what}_name"):
            return
        try:
            getattr(loop, f"set_{what}")(name)
        except Exception as e:  # a missing artifact, torch not installed: keep the old choice
            self.summary.setText(f"cannot switch the {what} to {name}: {e}")
            self._sync_combos()

    def _sync_combos(self) -> None:
        loop = self.loop
        for combo, name in ((self.estimator, loop.estimator_name), (self.controller, loop.controller_name)):
            if combo.currentText() != name:
                combo.blockSignals(True)
                combo.setCurrentText(name)
                combo.blockSignals(False)

    def refresh(self, session) -> bool:
        loop = getattr(session, "control", None)
        if loop is not self.loop:
            self.loop = loop
            if loop is not None:
                self._sync_combos()
        self.estimator.setEnabled(loop is not None)
        self.controller.setEnabled(loop is not None)
        if loop is None or not loop.history:
            return False
        steps = list(loop.history)[-SHOWN:]
        k = np.array([s.index for s in steps], dtype=float)
        self.cost_curve.setData(k, np.array([s.cost for s in steps]))
        self.J_curve.setData(k, np.array([s.J for s in steps]), connect="finite")
        self.measured_curve.setData(k, np.array([s.measured[0] for s in steps]), connect="finite")
        self.estimate_curve.setData(k, np.array([s.estimate[0] for s in steps]))
        J = loop.J
        self.summary.setText(f"{loop.estimator_name} + {loop.controller_name}: J = "
                             f"{'–' if np.isnan(J) else f'{J:.3f}'} (oracle LQG {loop.J_oracle:.3f}), "
                             f"frame {steps[-1].index}")
        self.updates += 1
        return True
