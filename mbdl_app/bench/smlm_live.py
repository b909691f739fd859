"""The live part of `mbdl bench smlm`: the shipped `microscopy` session, recorded, then checked.

The session of `mbdl run --config microscopy` (sim:smlm 64 x 64 at 100 frames/s through every
microscopy engine, each accumulating its super-resolved map) runs for `duration` seconds while
recording to `smlm_live.h5`. Then the recording is read back:

- frames lost = frames the source delivered - frames in the file, plus any gap in the recorded
  indices (the recorder must keep every frame: the target is 0);
- per engine: results, results/s, skipped inputs, compute latency p50/p99, end-to-end p99;
- per map (`<engine>.map`, the accumulating SR image): refresh rate over the run (publications
  / the span from the first to the last one), the median and p99 interval between two
  publications (from the recorded host times), end-to-end p99. Target: >= 2 Hz for every map.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from drivers.recording import RecordingReader
from mbdl_app.config import load_config
from mbdl_app.session.maps import map_label
from mbdl_app.session.report import final_tables, status_line
from mbdl_app.session.session import Session, with_param

TARGET_REFRESH_HZ = 2.0
KEYS = ("results", "skipped", "latency_p50_ms", "latency_p99_ms", "e2e_p99_ms", "backend")


def run_smlm_live(out: str | Path, duration: float = 30.0, size: int = 64, rate: float = 100.0,
                  log=print) -> dict[str, Any]:
    """Run, record and check the microscopy session; returns the `live` part of the report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "smlm_live.h5"
    path.unlink(missing_ok=True)
    cfg = load_config("microscopy")
    src = cfg.sources[0]
    uri = with_param(with_param(src.uri, "size", size), "rate", rate)
    cfg = cfg.model_copy(update={"sources": [src.model_copy(update={"uri": uri})]})
    session = Session(cfg, record=path)
    session.start()
    try:
        session.run(duration, on_tick=lambda st: log(status_line(st)), tick=5.0)
    finally:
        session.stop()
    st = session.status()
    final_tables(st)
    stream = src.name
    delivered = st.sources[stream]["items"]
    with RecordingReader(path) as rec:
        index = rec.arrays(stream, ["index"])["index"]
        gaps = int(np.sum(np.diff(index) - 1)) if len(index) > 1 else 0
        maps = {}
        for label in session.maps:
            t = rec.result_arrays(stream, map_label(label), ["t_host"])["t_host"][:, 2]  # published at
            dt = np.diff(t)
            span = float(t[-1] - t[0]) if len(t) > 1 else 0.0
            maps[map_label(label)] = {
                "publications": int(len(t)),
                "refresh_hz": round((len(t) - 1) / span, 3) if span > 0 else 0.0,
                "interval_p50_ms": round(1e3 * float(np.median(dt)), 1) if len(dt) else None,
                "interval_p99_ms": round(1e3 * float(np.percentile(dt, 99)), 1) if len(dt) else None,
                "e2e_p99_ms": st.engines[map_label(label)]["e2e_p99_ms"],
            }
    engines_ = {}
    for label in session.engines:
        e = st.engines[label]
        engines_[label] = {**{k: e[k] for k in KEYS}, "hop": session.hops.get(label),
                           "results_per_s": round(e["results"] / st.elapsed_s, 2)}
    lost = delivered - len(index) + gaps
    slowest = min((m["refresh_hz"] for m in maps.values()), default=0.0)
    report = {
        "config": "microscopy", "uri": uri, "duration_s": round(st.elapsed_s, 2),
        "source": {"items": delivered, "fps": round(delivered / st.elapsed_s, 2),
                   "max_lag_ms": st.sources[stream]["max_lag_ms"]},
        "recording": {"path": str(path), "frames": int(len(index)), "index_gaps": gaps,
                      "frames_lost": int(lost), "size_mb": round(path.stat().st_size / 2**20, 1)},
        "engines": engines_, "maps": maps,
        "targets": {
            "live_frames_lost": {"target": 0, "measured": int(lost), "met": lost == 0},
            "live_map_refresh_hz": {"target": f">= {TARGET_REFRESH_HZ}", "measured": slowest,
                                    "met": bool(maps) and slowest >= TARGET_REFRESH_HZ},
        },
    }
    rates = ", ".join(f"{k} {m['refresh_hz']:.2f}" for k, m in maps.items())
    log(f"live: {delivered} frames, {lost} lost in the recording; map refresh (Hz): {rates}")
    return report


def add_live_part(report: dict[str, Any], out: str | Path, duration: float) -> dict[str, Any]:
    """Run the live part, add it to the offline report of `mbdl bench smlm` (key `live`, its
    targets beside the offline ones) and rewrite smlm.json."""
    report["live"] = run_smlm_live(out, duration=duration)
    report["targets"].update(report["live"]["targets"])
    text = json.dumps(report, indent=2, default=float) + "\n"
    (Path(out) / "smlm.json").write_text(text, encoding="utf-8")
    return report
