"""`mbdl bench ceus`: issue 4's live target, CORONA beside RPCA-FISTA on sim:ceus, measured in one run.

Run 1 (the issue's command): `sim:ceus` at SIZE x SIZE, 100 frames/s, with `corona-ceus` and
`rpca-fista` (window 20, both in consecutive blocks: hop 20), not recorded. Reported per
engine: results/s (frames of S per second over the whole run), windows/s (= results/s / hop),
per-window compute latency p50/p99, end-to-end p99 (a frame's acquisition to its result:
block fill + queue + compute), frames skipped, live MSE; and the source's achieved rate.
Run 2 (half as long): the same with CORONA on a sliding window (hop 1: one window per
result), for the per-window rate. Target: CORONA >= 30 results/s in run 1.
Writes ceus_live.json; prints both final tables.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import psutil

from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.report import final_tables, status_line
from mbdl_app.session.session import Session

TARGET_RESULTS_PER_S = 30.0
KEYS = ("results", "skipped", "latency_p50_ms", "latency_p99_ms", "e2e_p99_ms", "mse_db_overall", "backend")


def _run(size: int, corona_hop: int | None, duration: float) -> dict:
    cfg = SessionConfig(
        sources=[SourceConfig(name="ceus", uri=f"sim:ceus?size={size}&rate=100")],
        engines=[EngineConfig(name="corona-ceus", hop=corona_hop), EngineConfig(name="rpca-fista")])
    session = Session(cfg)
    session.start()
    try:
        session.run(duration, on_tick=lambda st: print(status_line(st), file=sys.stderr, flush=True),
                    tick=5.0)
    finally:
        session.stop()
    st = session.status()
    final_tables(st)
    engines = {}
    for name, e in st.engines.items():
        hop = session.hops[name]
        rate = e["results"] / st.elapsed_s
        engines[name] = {**{k: e[k] for k in KEYS}, "hop": hop, "results_per_s": round(rate, 2),
                         "windows_per_s": round(rate / hop, 3)}
    src = st.sources["ceus"]
    return {"duration_s": round(st.elapsed_s, 2), "engines": engines,
            "source": {"items": src["items"], "fps": round(src["items"] / st.elapsed_s, 2),
                       "nominal_hz": src["nominal_hz"], "max_lag_ms": src["max_lag_ms"]}}


def run_ceus_bench(out: Path, duration: float = 60.0, size: int = 128) -> int:
    """Both runs; returns 0 when the target is met, 1 when it is missed."""
    out.mkdir(parents=True, exist_ok=True)
    blocks = _run(size, None, duration)
    sliding = _run(size, 1, duration / 2)
    corona = blocks["engines"]["corona-ceus"]
    report = {
        "bench": "ceus", "size": size, "window": 20, "blocks": blocks, "sliding_corona": sliding,
        "target": {"corona_results_per_s_at_least": TARGET_RESULTS_PER_S,
                   "measured": corona["results_per_s"],
                   "met": corona["results_per_s"] >= TARGET_RESULTS_PER_S},
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "load_avg_1m_at_end": round(psutil.getloadavg()[0], 2)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "ceus_live.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    fista = blocks["engines"]["rpca-fista"]
    print(f"CORONA {corona['results_per_s']:.1f} results/s ({corona['windows_per_s']:.2f} windows/s, "
          f"p99 {corona['latency_p99_ms']:.0f} ms per window, e2e p99 {corona['e2e_p99_ms']:.0f} ms); "
          f"RPCA-FISTA {fista['results_per_s']:.1f} results/s (p99 {fista['latency_p99_ms']:.0f} ms); "
          f"sliding CORONA {sliding['engines']['corona-ceus']['results_per_s']:.2f} results/s; "
          f"target >= {TARGET_RESULTS_PER_S:.0f}: {'met' if report['target']['met'] else 'MISSED'}")
    print(f"report: {out / 'ceus_live.json'}")
    return 0 if report["target"]["met"] else 1
