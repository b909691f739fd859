"""Source URIs: `scheme:target?key=value&...` resolved to a Source.

    sim:ceus?seed=1&rate=100&size=128      sim:lorenz?rate=500&r2=1
    sim:isi?gamma=0.2&snr=8&block=500&rate=20  (a symbol stream: blocks of received samples)
    sim:cs?operator=lista-cs&rate=50  (compressed-sensing measurements x = H s + w of sparse codes)
    sim:smlm?seed=1&density=2&photons=1000  mmcore:MMConfig.cfg?exposure=10&roi=0,0,64,64
    replay:session.h5?stream=ceus&speed=1  (speed=0: as fast as possible)
    camera:0  video:clip.mp4  tiff:stack.tif  serial:/dev/ttyUSB0?baud=115200

Each scheme's module is imported only when used, so a headless box without a camera
stack never imports OpenCV.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from drivers.base import Source
from drivers.errors import SourceError


@dataclass(frozen=True, slots=True)
class ParsedURI:
    uri: str
    scheme: str
    target: str
    params: dict[str, str]

    def get(self, key: str, default, cast: Callable = str):
        """Parameter `key` cast by `cast`; SourceError naming the URI if it does not parse."""
        if key not in self.params:
            return default
        raw = self.params[key]
        try:
            if cast is bool:
                if raw.lower() in ("1", "true", "yes", "on"):
                    return True
                if raw.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(raw)
            return cast(raw)
        except ValueError:
            raise SourceError(
                f"{self.uri}: parameter {key}={raw!r} is not a valid {cast.__name__}"
            ) from None

    def check_known(self, known: set[str]) -> None:
        """Reject parameters the source does not understand (a typo must not pass silently)."""
        unknown = sorted(set(self.params) - known)
        if unknown:
            raise SourceError(
                f"{self.uri}: unknown parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )


# scheme (and for sim: the target) -> "module:factory"; factory(ParsedURI) -> Source
_SCHEMES: dict[str, str] = {
    "sim:ceus": "drivers.sim.ceus:source_from_uri",
    "sim:lorenz": "drivers.sim.lorenz:source_from_uri",
    "sim:isi": "drivers.sim.isi:source_from_uri",
    "sim:smlm": "drivers.sim.smlm:source_from_uri",
    "sim:particle": "drivers.sim.particle:source_from_uri",
    "sim:cs": "drivers.sim.cs:source_from_uri",
    "replay": "drivers.recording:source_from_uri",
    "camera": "drivers.camera:source_from_uri",
    "video": "drivers.video:source_from_uri",
    "tiff": "drivers.tiff:source_from_uri",
    "serial": "drivers.serial_sensor:source_from_uri",
    "mmcore": "drivers.mmcore:source_from_uri",
}


def parse_uri(uri: str) -> ParsedURI:
    """Split a URI into scheme, target and parameters; SourceError if malformed."""
    if not isinstance(uri, str) or ":" not in uri:
        raise SourceError(f"{uri!r}: not a source URI (expected scheme:target, e.g. sim:ceus)")
    scheme, rest = uri.split(":", 1)
    target, _, query = rest.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise SourceError(f"{uri}: malformed parameters {query!r} (expected key=value&...)") from None
    return ParsedURI(uri=uri, scheme=scheme.lower(), target=target, params=dict(pairs))


def known_schemes() -> list[str]:
    return sorted(_SCHEMES)


def open_source(uri: str) -> Source:
    """Build (not open) the Source for `uri`; SourceError naming it if unknown or malformed."""
    parsed = parse_uri(uri)
    key = f"{parsed.scheme}:{parsed.target}" if parsed.scheme == "sim" else parsed.scheme
    entry = _SCHEMES.get(key)
    if entry is None:
        raise SourceError(
            f"{uri}: unknown source {key!r}; known: {', '.join(known_schemes())}"
        )
    module, _, factory = entry.partition(":")
    return getattr(importlib.import_module(module), factory)(parsed)
