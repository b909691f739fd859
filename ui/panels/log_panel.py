"""Log panel: every log record of the app, delivered to the GUI thread by a signal."""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QPlainTextEdit


class _Emitter(QObject):
    record = Signal(str, int)


class QtLogHandler(logging.Handler):
    """A logging handler safe to call from any thread (the signal is queued)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.emitter = _Emitter()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s",
                                            "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.emitter.record.emit(self.format(record), record.levelno)
        except RuntimeError:  # the panel is gone (window closed)
            pass


class LogPanel(QPlainTextEdit):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setReadOnly(True)
        self.setMaximumBlockCount(5000)
        self.handler = QtLogHandler()
        self.handler.emitter.record.connect(self.add)
        logging.getLogger().addHandler(self.handler)

    def add(self, text: str, level: int = logging.INFO) -> None:
        colour = "#e06c6c" if level >= logging.ERROR else "#e5c07b" if level >= logging.WARNING else None
        esc = text.replace("&", "&amp;").replace("<", "&lt;")
        self.appendHtml(f'<span style="color:{colour}">{esc}</span>' if colour else esc)

    def detach(self) -> None:
        logging.getLogger().removeHandler(self.handler)
