"""What engines exist and what each consumes, for menus and validation.

An engine's kind decides which streams it can read: "frames" (imaging engines on
windows (T, C, H, W)), "samples" (trackers), or "vectors" (generic (N, m) -> (N, n)
engines such as sparse coding, usable offline but not on a live stream).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache

import engines
from engines.base import EngineInfo


def engine_kind(engine) -> str:
    if callable(getattr(engine, "step", None)) and callable(getattr(engine, "reset", None)):
        return "samples"
    return "frames" if len(engine.info.in_shape) == 4 else "vectors"


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    name: str
    kind: str  # frames | samples | vectors
    info: EngineInfo | None
    error: str = ""  # why it cannot be built here (missing artifact, backend, ...)


@cache
def describe(name: str) -> CatalogEntry:
    """Build `name` once with its defaults to learn its kind and info (cached)."""
    try:
        e = engines.load(name)
    except Exception as exc:  # a broken artifact must not break the menu
        return CatalogEntry(name, "unknown", None, f"{type(exc).__name__}: {exc}")
    return CatalogEntry(name, engine_kind(e), e.info)


def catalog(kind: str | None = None, stop: threading.Event | None = None) -> list[CatalogEntry]:
    """Every registered engine (or those of one kind), sorted by name; when `stop` is set,
    the engines described so far (a caller on a worker thread can end early)."""
    entries = []
    for name in engines.available():
        if stop is not None and stop.is_set():
            break
        entries.append(describe(name))
    return [e for e in entries if kind is None or e.kind == kind]
