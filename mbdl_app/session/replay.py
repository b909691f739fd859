"""Replaying a recording through engines, and comparing two runs' results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from drivers.recording import RecordingReader
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig, parse_config
from mbdl_app.errors import ConfigError


def replay_config(path: str | Path, engines: list[EngineConfig] | None = None,
                  speed: float = 1.0) -> SessionConfig:
    """A session that replays every stream of `path` (stream names kept) through
    `engines`, or through the engines the recording was made with when None."""
    path = Path(path)
    with RecordingReader(path) as rec:
        streams = list(rec.streams)
        recorded = rec.config
    sources = [SourceConfig(name=s, uri=f"replay:{path}?stream={s}&speed={speed:g}")
               for s in streams]
    if engines is None:
        try:
            engines = parse_config(recorded, f"{path} (recorded config)").engines
        except ConfigError:
            engines = []
        kept: list[EngineConfig] = []
        for e in engines:  # a chained engine stays when the engine it reads stays
            if e.source in streams or e.input in {k.label for k in kept}:
                kept.append(e)
        engines = kept
    return SessionConfig(sources=sources, engines=engines)


def compare_results(a: str | Path, b: str | Path) -> dict[str, dict]:
    """Per (stream/engine) present in both recordings: results at the same input index
    and the largest absolute difference between them."""
    out = {}
    with RecordingReader(a) as ra, RecordingReader(b) as rb:
        for key in sorted(set(ra.results) & set(rb.results)):
            xa, xb = ra.result_arrays(*key), rb.result_arrays(*key)
            common, ia, ib = np.intersect1d(xa["index"], xb["index"], return_indices=True)
            diff = (float(np.max(np.abs(xa["data"][ia] - xb["data"][ib])))
                    if len(common) else float("nan"))
            out["/".join(key)] = {"common": int(len(common)), "max_abs_diff": diff,
                                  "n_a": int(len(xa["index"])), "n_b": int(len(xb["index"]))}
    return out


def _span(t) -> float:
    return float(t[-1] - t[0]) if len(t) else 0.0


def describe(path: str | Path) -> dict:
    """What a recording holds: format, config, streams and results with counts.

    Each stream has two clocks: `device_time_span_s` spans the items' own time stamps `t`
    (the device's clock; a simulator's simulated time, e.g. sim:lorenz advances dt = 0.02 s
    per sample), `acquisition_wall_span_s` the host's wall-clock stamps `t_host` taken when
    the items were acquired. `nominal_rate_hz` is the rate the source was opened at (items
    per wall second). `repaired` says what the reader repaired when the writer had been killed.
    """
    with RecordingReader(path) as rec:
        info = {"path": str(path), "format_version": rec.format_version,
                "created": rec.created, "versions": rec.versions, "streams": {}, "results": {}}
        if rec.repaired is not None:
            info["repaired"] = {"kept": rec.repaired.kept, "dropped": rec.repaired.dropped}
        for s in rec.streams:
            si = rec.info(s)
            clocks = rec.arrays(s, ["t", "t_host"])
            info["streams"][s] = {
                "uri": si.uri, "kind": si.kind, "shape": list(si.shape), "items": rec.n_items(s),
                "nominal_rate_hz": si.rate_hz, "device_time_span_s": _span(clocks["t"]),
                "acquisition_wall_span_s": _span(clocks["t_host"]), "truth": sorted(si.truth_shapes)}
        for stream, engine in rec.results:
            r = rec.result_arrays(stream, engine, ["index", "latency"])
            lat = r["latency"]
            info["results"][f"{stream}/{engine}"] = {
                "results": int(len(r["index"])),
                "shape": list(rec.result_info(stream, engine).get("shape", [])),
                "latency_p50_ms": float(np.median(lat) * 1e3) if len(lat) else None}
        info["config"] = rec.config
    return info


def describe_json(path: str | Path) -> str:
    return json.dumps(describe(path), indent=2, default=str)
