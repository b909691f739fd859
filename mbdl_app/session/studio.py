"""The application state a front end drives: one session at a time, live or replay.

Qt-free (the GUI adapts it; a test drives it directly). Every change that needs new
sources or engines restarts the session; a recording in progress then goes on in a
new part file (`name.part2.h5`, ...) so nothing recorded is lost.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from drivers.recording import ReplaySource
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.errors import SessionError
from mbdl_app.session import Session
from mbdl_app.session.replay import replay_config

log = logging.getLogger(__name__)


def next_part(path: Path) -> Path:
    """`a.h5` -> `a.part2.h5` -> `a.part3.h5` (the first that does not exist)."""
    stem = path.name.removesuffix(".h5")
    base = stem.rsplit(".part", 1)[0] if ".part" in stem else stem
    k = 2
    while (cand := path.with_name(f"{base}.part{k}.h5")).exists():
        k += 1
    return cand


def artifact_engine(folder: str | Path, source: str | None = None) -> EngineConfig:
    """The engine of an artifact folder outside exported_models/ (a model calibrated by `mbdl
    calibrate`): named by its absolute path (engines.load takes a path), labelled by its card's
    name. SessionError naming the folder when it has no readable card.json."""
    folder = Path(folder)
    try:
        card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    except OSError:
        raise SessionError(f"{folder}: not an artifact folder (no readable card.json)") from None
    except json.JSONDecodeError as e:
        raise SessionError(f"{folder / 'card.json'}: not valid JSON ({e})") from None
    label = card.get("name") if isinstance(card, dict) else None
    return EngineConfig(name=str(folder.resolve()), id=str(label or folder.name), source=source)


class Studio:
    """Owns the current Session; `listeners` are called (no arguments) after every change."""

    def __init__(self, config: SessionConfig) -> None:
        self.live_config = config
        self.config = config
        self.session: Session | None = None
        self.replay_path: Path | None = None
        self.recording_path: Path | None = None
        self.listeners: list[Callable[[], None]] = []

    # ---- lifecycle ------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.session is not None

    @property
    def mode(self) -> str:
        return "replay" if self.replay_path else "live"

    def start(self) -> Session:
        """Start a session on the current config; errors propagate (one line each)."""
        if self.session is not None:
            return self.session
        part = next_part(self.recording_path) if self.recording_path else None
        session = Session(self.config, record=part)  # records from its very first item
        try:
            session.start()  # raises with everything closed on failure
        except Exception:
            self.recording_path = None
            self._changed()
            raise
        self.session, self.recording_path = session, part
        self._changed()
        return session

    def stop(self) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            session.stop()
        self._changed()

    def apply(self, config: SessionConfig) -> Session | None:
        """Switch to `config` (sources, engines, backends); restarts a running session."""
        was_running = self.running
        self.stop()
        self.config = config
        if self.mode == "live":
            self.live_config = config
        return self.start() if was_running else None

    def set_engines(self, engines_: list[EngineConfig]) -> Session | None:
        return self.apply(self.config.model_copy(update={"engines": engines_}))

    def add_engine(self, ec: EngineConfig) -> str:
        """One more engine beside the others, e.g. a calibrated model beside the shipped one: added
        to the running session without a restart (Session.add_engine; a recording in progress goes
        on in its next part file, which holds the new engine's results too) and to the config, so
        later starts keep it. Returns its label; SessionError / EngineError in one line."""
        try:
            config = SessionConfig(sources=self.config.sources, engines=[*self.config.engines, ec],
                                   record=self.config.record)
        except ValidationError as e:
            raise SessionError(f"add engine {ec.label!r}: {e.errors()[0]['msg']}") from None
        if self.session is not None:
            self.session.add_engine(ec)
            if self.recording_path is not None:
                part = next_part(self.recording_path)
                self.session.rotate_recording(part)
                self.recording_path = part
        self.config = config
        if self.mode == "live":
            self.live_config = config
        self._changed()
        return ec.label

    def set_sources(self, sources: list[SourceConfig]) -> Session | None:
        names = {s.name for s in sources}
        kept = [e for e in self.config.engines if e.source is None or e.source in names]
        return self.apply(SessionConfig(sources=sources, engines=kept))

    # ---- recording --------------------------------------------------------------------
    def start_recording(self, path: str | Path) -> None:
        """Record the running session to `path` (RecordingError if it cannot be written)."""
        if self.session is None:
            self.start()
        self.session.start_recording(path)
        self.recording_path = Path(path)
        self._changed()

    def stop_recording(self) -> Path | None:
        path = self.session.stop_recording() if self.session else None
        self.recording_path = None
        self._changed()
        return path

    # ---- replay -------------------------------------------------------------------------
    def open_recording(self, path: str | Path, speed: float = 1.0) -> Session:
        """Replay `path` through the engines it was recorded with, paused at its start."""
        cfg = replay_config(path, speed=speed)
        self.stop()
        self.replay_path = Path(path)
        self.config = cfg
        session = self.start()
        return session

    def back_to_live(self) -> Session:
        self.stop()
        self.replay_path = None
        self.config = self.live_config
        return self.start()

    def replay_sources(self) -> list[ReplaySource]:
        if self.session is None:
            return []
        return [s.source for s in self.session.streams.values()
                if isinstance(s.source, ReplaySource)]

    def play(self) -> None:
        for s in self.replay_sources():
            s.resume()
        self._changed()

    def pause(self) -> None:
        for s in self.replay_sources():
            s.pause()
        self._changed()

    def step(self, n: int = 1) -> None:
        for s in self.replay_sources():
            s.step(n)

    def seek(self, fraction: float) -> None:
        """Jump every replayed stream to the same fraction (0..1) of the recording."""
        for s in self.replay_sources():
            _, n = s.position()
            s.seek(round(fraction * max(n - 1, 0)))

    def set_speed(self, speed: float) -> None:
        for s in self.replay_sources():
            s.set_speed(speed)

    def position(self) -> float | None:
        """Replay progress 0..1 of the first stream, None when live."""
        srcs = self.replay_sources()
        if not srcs:
            return None
        k, n = srcs[0].position()
        return k / max(n, 1)

    @property
    def paused(self) -> bool:
        srcs = self.replay_sources()
        return bool(srcs) and all(s.paused for s in srcs)

    def _changed(self) -> None:
        for fn in list(self.listeners):
            try:
                fn()
            except Exception:  # a view's bug must not break the controller
                log.exception("studio listener failed")
