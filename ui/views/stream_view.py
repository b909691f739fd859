"""The frame shared by the per-stream views (symbol errors, sparse codes): the stream's heading,
a one-line summary under it, and the vertical layout the view adds its plots to."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget


class StreamView(QWidget):
    """One stream's view; a subclass adds its plots to `self.body` and implements `refresh(session)`
    (pulled at REFRESH_HZ), counting `updates`."""

    REFRESH_HZ = 5.0

    def __init__(self, stream: str, heading: str, parent=None) -> None:
        super().__init__(parent)
        self.stream = stream
        self.updates = 0
        self.body = QVBoxLayout(self)
        self.body.setContentsMargins(2, 2, 2, 2)
        self.body.addWidget(QLabel(f"<b>{stream}</b> — {heading}"))
        self.summary = QLabel("")
        self.body.addWidget(self.summary)
