"""Logging: to stderr and a rotating file in the user log dir."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

import platformdirs

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_dir() -> Path:
    return Path(platformdirs.user_log_dir("mbdl-studio", appauthor=False))


def setup_logging(level: int = logging.WARNING, to_file: bool = True) -> Path | None:
    """Configure the root logger once; returns the log file path (None if unwritable)."""
    root = logging.getLogger()
    if getattr(root, "_mbdl_configured", False):
        return getattr(root, "_mbdl_file", None)
    root.setLevel(logging.DEBUG)
    err = logging.StreamHandler()
    err.setLevel(level)
    err.setFormatter(logging.Formatter("mbdl: %(levelname)s: %(message)s"))
    root.addHandler(err)
    path = None
    if to_file:
        try:
            d = log_dir()
            d.mkdir(parents=True, exist_ok=True)
            path = d / "mbdl.log"
            fh = logging.handlers.RotatingFileHandler(path, maxBytes=5 * 2**20, backupCount=3)
            fh.setLevel(logging.INFO)
            fh.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(fh)
        except OSError:
            path = None  # a read-only home must not stop a headless run
    root._mbdl_configured = True  # type: ignore[attr-defined]
    root._mbdl_file = path  # type: ignore[attr-defined]
    return path
