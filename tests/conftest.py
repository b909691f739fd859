"""Shared test setup: Qt offscreen, and small helpers."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
