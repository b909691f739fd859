"""`mbdl bench session`: the foundation issue's targets, measured in one run.

1. sim:ceus 128x128 I/Q at 100 frames/s with the SVD filter (window 20), recorded:
   the source never falls behind, frames in the file == frames produced; the SVD
   engine's throughput and latency p50/p99.
2. sim:lorenz at 500 samples/s with the EKF, recorded: per-step latency p99; the
   recording is lossless (samples and results).
3. The default session at 2x real time (not recorded): RSS growth after the first minute.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import psutil

from drivers.recording import RecordingReader
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig, default_config
from mbdl_app.session.report import final_tables, status_line
from mbdl_app.session.session import Session, with_param


def _recorded_run(name: str, cfg: SessionConfig, duration: float, out: Path) -> dict:
    path = out / f"{name}.h5"
    path.unlink(missing_ok=True)
    session = Session(cfg, record=path)
    session.start()
    session.run(duration, on_tick=lambda st: print(status_line(st), file=sys.stderr, flush=True),
                tick=5.0)
    session.stop()
    st = session.status()
    final_tables(st)
    rep = {"duration_s": st.elapsed_s, "sources": st.sources, "engines": st.engines,
           "recorder": st.recorder, "file_mb": path.stat().st_size / 2**20}
    with RecordingReader(path) as rec:
        rep["in_file"] = {s: rec.n_items(s) for s in rec.streams}
        rep["results_in_file"] = {f"{s}/{e}": len(rec.result_arrays(s, e, ["index"])["index"])
                                  for s, e in rec.results}
    checks = {}
    for s, src in st.sources.items():
        expected = round(st.elapsed_s * src["nominal_hz"])
        checks[f"{s}: items in file == produced"] = rep["in_file"][s] == src["items"]
        checks[f"{s}: no gaps"] = src["gaps"] == 0
        checks[f"{s}: produced >= 99% of rate x time"] = src["items"] >= 0.99 * expected
    for e, eng in st.engines.items():
        key = f"{eng['stream']}/{e}"
        checks[f"{e}: results in file == produced"] = rep["results_in_file"][key] == eng["results"]
        checks[f"{e}: running to the end"] = eng["state"] in ("running", "stopped")
    rep["checks"] = checks
    path.unlink()  # GBs of frames; the counts above are what the bench reports
    return rep


def _soak(duration: float, speed: float = 2.0) -> dict:
    base = default_config()
    cfg = base.model_copy(update={"sources": [
        s.model_copy(update={"uri": with_param(s.uri, "speed", speed)}) for s in base.sources]})
    session = Session(cfg)
    proc = psutil.Process(os.getpid())
    session.start()
    t0 = time.monotonic()
    samples = []  # (seconds since start, RSS MB)

    def tick(st):
        samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
        if len(samples) % 30 == 0:
            print(status_line(st), file=sys.stderr, flush=True)

    session.run(duration, on_tick=tick)
    session.stop()
    st = session.status()
    final_tables(st)
    after_1min = [m for t, m in samples if t >= 60.0] or [m for _, m in samples]
    return {"duration_s": st.elapsed_s, "speed": speed, "sources": st.sources,
            "engines": st.engines, "rss_mb_start": samples[0][1] if samples else None,
            "rss_mb_at_1min": after_1min[0], "rss_mb_end": samples[-1][1],
            "rss_mb_max_after_1min": max(after_1min),
            "rss_growth_after_1min_mb": max(after_1min) - after_1min[0],
            "rss_trace": samples[:: max(1, len(samples) // 120)]}


def run_all(out: Path, duration: float = 60.0, soak: float = 600.0) -> int:
    out.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    ceus = SessionConfig(
        sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=1&rate=100&size=128")],
        engines=[EngineConfig(name="svd-filter", source="ceus", params={"k": 2, "window": 20})])
    report["ceus_svd"] = _recorded_run("ceus_svd", ceus, duration, out)
    lorenz = SessionConfig(
        sources=[SourceConfig(name="lorenz", uri="sim:lorenz?seed=1&rate=500&r2=1")],
        engines=[EngineConfig(name="ekf", source="lorenz")])
    report["lorenz_ekf"] = _recorded_run("lorenz_ekf", lorenz, duration, out)
    if soak > 0:
        s = report["soak"] = _soak(soak)
        report["soak"]["checks"] = {
            "RSS grows < 50 MB after the first minute": s["rss_growth_after_1min_mb"] < 50.0}
    path = out / "session_bench.json"
    path.write_text(json.dumps(report, indent=2, default=float))
    ok = True
    for part in ("ceus_svd", "lorenz_ekf", "soak"):
        for check, passed in report.get(part, {}).get("checks", {}).items():
            print(f"{'PASS' if passed else 'FAIL'}  {part}: {check}")
            ok &= bool(passed)
    print(f"report: {path}")
    return 0 if ok else 1
