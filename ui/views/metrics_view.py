"""Metrics dock: per engine its family, backend, rate, latency, drops and live MSE (symbol
detectors: their symbol error rate over the recent blocks);
per source its rate, gaps and errors. Updated from the bridge's 2 Hz stats."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ui.theme import ERROR

ENGINE_COLS = ["engine", "stream", "family", "backend", "state", "fps", "p50 ms", "p99 ms",
               "e2e p99 ms", "drops", "MSE dB", "SER"]
SOURCE_COLS = ["source", "state", "fps", "nominal Hz", "items", "gaps", "errors", "lag ms"]


def _num(v, fmt=".1f") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _table(cols: list[str]) -> QTableWidget:
    t = QTableWidget(0, len(cols))
    t.setHorizontalHeaderLabels(cols)
    t.verticalHeader().setVisible(False)
    t.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    # Interactive, sized once per new row set: re-measuring every cell twice a second
    # costs tens of milliseconds on the GUI thread.
    t.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    t.setAlternatingRowColors(True)
    t.setMinimumHeight(48)  # a header and a row: the dock may stay low under the views
    return t


class MetricsView(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.engines = _table(ENGINE_COLS)
        self.sources = _table(SOURCE_COLS)
        self.summary = QLabel("no session")
        # the tables side by side: the dock stays low under the views and still shows rows
        tables = QHBoxLayout()
        tables.addWidget(self.engines, 3)
        tables.addWidget(self.sources, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(self.summary)
        lay.addLayout(tables, 1)

    @staticmethod
    def _fill(table: QTableWidget, rows: list[list[str]], bad: list[bool]) -> None:
        resize = table.rowCount() != len(rows)
        table.setRowCount(len(rows))
        for r, (row, is_bad) in enumerate(zip(rows, bad, strict=True)):
            for c, text in enumerate(row):
                cell = table.item(r, c)
                if cell is None:
                    cell = QTableWidgetItem()
                    table.setItem(r, c, cell)
                cell.setText(text)
                cell.setTextAlignment(Qt.AlignmentFlag.AlignRight if c >= 5 else Qt.AlignmentFlag.AlignLeft)
                cell.setForeground(QColor(ERROR) if is_bad else table.palette().text().color())
        if resize:
            table.resizeColumnsToContents()

    def update_stats(self, st) -> None:
        rows, bad = [], []
        for name, e in st.engines.items():
            rows.append([name, e["stream"], e["family"], e["backend"], e["state"], _num(e["fps"]),
                         _num(e["latency_p50_ms"], ".2f"), _num(e["latency_p99_ms"], ".2f"),
                         _num(e["e2e_p99_ms"], ".1f"), str(e["skipped"]), _num(e["mse_db"], ".2f"),
                         _num(e.get("ser"), ".2e")])
            bad.append(e["state"] == "failed")
        self._fill(self.engines, rows, bad)
        rows, bad = [], []
        for name, s in st.sources.items():
            rows.append([name, s["state"], _num(s["fps"]), _num(s["nominal_hz"]), str(s["items"]),
                         str(s["gaps"]), str(s["errors"]), _num(s["max_lag_ms"], ".1f")])
            bad.append(s["state"] in ("failed", "error"))
        self._fill(self.sources, rows, bad)
        rec = ""
        if st.recorder:
            rec = f" · recording {st.recorder['path']} ({st.recorder['state']})"
        self.summary.setText(f"t = {st.elapsed_s:.0f} s · RSS {st.rss_mb:.0f} MB{rec}")
