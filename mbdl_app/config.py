"""Typed session configuration: pydantic models read from TOML.

A session = sources (named URIs) + engines (each bound to one source by name) +
an optional recording path. Unknown keys are errors, so a typo never passes silently.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    model_validator,
)

from mbdl_app.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Strict):
    """One input stream: `name` is how engines and recordings refer to it."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    uri: str


class EngineConfig(_Strict):
    """One engine on one source. `id` labels it (default: `name`); `params` go to its builder.

    `source` may be left out: the engine then reads the first source of the kind it
    needs (frames for imaging engines, samples for trackers). `input` chains engines: the
    engine reads the output frames of the engine labelled `input` (defined earlier in the
    list; e.g. CORONA's bubbles feed ULM) instead of a source, and records its results on
    that engine's source; it cannot also set `source`. `hop` (imaging engines): new frames
    per call, 1 .. the window; default the window (consecutive blocks, each frame once).
    `lag` (imaging engines with one output frame per input frame): publish the output frames
    `lag` frames before the window's newest, 0 .. window - hop; e.g. a sliding CORONA (hop 1)
    with lag = window // 2 keeps each window's centre frame, which it separates best, at
    `lag` frames of latency (`mbdl reproduce fig7 --sliding`).
    """

    name: str
    source: str | None = None
    input: str | None = None
    id: str | None = None
    backend: str = "auto"
    hop: PositiveInt | None = None
    lag: NonNegativeInt = 0
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.id or self.name


class ControlConfig(_Strict):
    """The closed loop of a stage-tracking session (mbdl_app/session/stage_control.py): the frame
    stream `source` (default: the first) is centred on its particle by moving its XY stage.
    dt (s per frame; default 1 / the source's rate), pixel_um (default: the source's meta), q2, r2
    (the plant the KF assumes), s_max (the MPC's box on |s|, um/s^2)."""

    source: str | None = None
    estimator: Literal["kf", "kf-mismatched", "kalmannet-cv"] = "kf"
    controller: Literal["lqr", "mpc"] = "lqr"
    dt: float | None = Field(default=None, gt=0)
    pixel_um: float | None = Field(default=None, gt=0)
    q2: float = Field(default=1.0, ge=0)
    r2: float = Field(default=1.0, gt=0)
    s_max: float = Field(default=5.0, gt=0)


class RecordConfig(_Strict):
    path: str | None = None


class SessionConfig(_Strict):
    sources: list[SourceConfig] = Field(min_length=1)
    engines: list[EngineConfig] = Field(default_factory=list)
    record: RecordConfig = Field(default_factory=RecordConfig)
    control: ControlConfig | None = None

    @model_validator(mode="after")
    def _names_resolve(self) -> SessionConfig:
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate source name(s): {', '.join(dup)}")
        labels = [e.label for e in self.engines]
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate engine id(s): {', '.join(dup)} (give each an `id`)")
        for i, e in enumerate(self.engines):
            if e.input is not None:
                earlier = labels[:i]
                if e.source is not None:
                    raise ValueError(f"engine {e.label!r} sets both source {e.source!r} and input "
                                     f"{e.input!r}; a chained engine reads its input engine's source")
                if e.input not in earlier:
                    raise ValueError(f"engine {e.label!r} reads engine {e.input!r}, which is not defined "
                                     f"before it (engines so far: {', '.join(earlier) or 'none'})")
            if e.source is not None and e.source not in names:
                raise ValueError(
                    f"engine {e.label!r} reads source {e.source!r}, which is not defined "
                    f"(sources: {', '.join(names)})"
                )
        if self.control is not None and self.control.source is not None and self.control.source not in names:
            raise ValueError(f"control reads source {self.control.source!r}, which is not defined "
                             f"(sources: {', '.join(names)})")
        return self

    def to_toml_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    return f"{where}: {err['msg']}"


def parse_config(data: dict[str, Any], origin: str) -> SessionConfig:
    """Validate a config mapping; ConfigError naming `origin` and the first problem."""
    try:
        return SessionConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{origin}: {_first_error(e)}") from None


def shipped_configs() -> list[str]:
    """Names of the session configs shipped in mbdl_app/sessions/ (`--config NAME`)."""
    folder = resources.files("mbdl_app").joinpath("sessions")
    if not folder.is_dir():
        return []
    return sorted(f.name[:-5] for f in folder.iterdir() if f.name.endswith(".toml"))


def load_config(path: str | Path) -> SessionConfig:
    """Read a TOML session config; ConfigError naming the file and what is wrong.

    `path` is a file, or the name of a shipped config (`microscopy`, `comms`, ...: a file
    of that name takes precedence)."""
    path = Path(path)
    if not path.exists() and path.suffix == "" and len(path.parts) == 1:
        if path.name in shipped_configs():
            text = resources.files("mbdl_app").joinpath("sessions", f"{path.name}.toml").read_text("utf-8")
            return _parse_toml(text, f"{path.name} (shipped config)")
        raise ConfigError(f"{path}: no such config file, and no shipped config of that name "
                          f"(shipped: {', '.join(shipped_configs()) or 'none'})")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror or e})") from None
    return _parse_toml(text, str(path))


def _parse_toml(text: str, origin: str) -> SessionConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin}: not valid TOML ({e})") from None
    return parse_config(data, origin)


def default_config() -> SessionConfig:
    """The embedded default session (CEUS + SVD filter, Lorenz + EKF)."""
    text = resources.files("mbdl_app").joinpath("default_session.toml").read_text("utf-8")
    return _parse_toml(text, "default_session.toml")
