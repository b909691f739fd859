"""`mbdl bench comms`: issue 16's live target, every symbol detector on 10,000 symbols/s, measured.

Runs the shipped `comms` session (mbdl_app/sessions/comms.toml: two sim:isi streams of 20 blocks
of 500 symbols a second, six detectors on the first, the frozen and the pilot-adapted BCJRNet and
BCJR on the drifting second) for `duration` seconds at `speed` times real time, not recorded.
Reported per detector: symbols/s (blocks detected x 500 / run time), blocks skipped, compute
latency p50/p99 per block, end-to-end p99 (a block's acquisition to its decisions: queue +
compute), SER; per stream the symbols/s sent; the process's CPU time over the run (cores used)
and the machine's load average. Target: every detector >= 10,000 symbols/s x speed, nothing
skipped, and end-to-end p99 under END_TO_END_S (it keeps up instead of building a backlog that
the stop drains). Writes comms_live.json; prints the final table.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import psutil

from mbdl_app.config import load_config
from mbdl_app.session.report import final_tables, status_line
from mbdl_app.session.session import Session, with_param

TARGET_SYMBOLS_PER_S = 10_000
END_TO_END_S = 1.0
KEYS = ("results", "skipped", "latency_p50_ms", "latency_p99_ms", "e2e_p99_ms", "ser_overall", "backend")


def run_comms_bench(out: Path, duration: float = 60.0, speed: float = 1.0) -> int:
    """One run; returns 0 when the target is met, 1 when it is missed."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config("comms")
    cfg = cfg.model_copy(update={"sources": [s.model_copy(update={"uri": with_param(s.uri, "speed", speed)})
                                             for s in cfg.sources]})
    session = Session(cfg)
    session.start()
    proc = psutil.Process()
    cpu0 = sum(proc.cpu_times()[:2])
    try:
        session.run(duration, tick=5.0,
                    on_tick=lambda st: print(status_line(st), file=sys.stderr, flush=True))
    finally:
        session.stop()
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    st = session.status()
    final_tables(st)
    block = {name: s.info.shape[0] for name, s in session.streams.items()}
    engines = {name: {**{k: e[k] for k in KEYS}, "stream": e["stream"],
                      "symbols_per_s": round(e["results"] * block[e["stream"]] / st.elapsed_s)}
               for name, e in st.engines.items()}
    sources = {name: {"blocks": s["items"], "symbols_per_s": round(s["items"] * block[name] / st.elapsed_s),
                      "max_lag_ms": s["max_lag_ms"]} for name, s in st.sources.items()}
    need = TARGET_SYMBOLS_PER_S * speed
    missed = {name: e for name, e in engines.items()
              if e["symbols_per_s"] < 0.98 * need or e["skipped"] or e["e2e_p99_ms"] > 1e3 * END_TO_END_S}
    report = {
        "bench": "comms", "duration_s": round(st.elapsed_s, 2), "speed": speed, "engines": engines,
        "sources": sources, "process_cpu_s": round(cpu, 2), "cores_used": round(cpu / st.elapsed_s, 3),
        "target": {"symbols_per_s_per_detector_at_least": need, "end_to_end_p99_s_at_most": END_TO_END_S,
                   "missed_by": sorted(missed), "met": not missed},
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(),
                    "load_avg_1m_at_end": round(psutil.getloadavg()[0], 2)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / "comms_live.json").write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    slowest = min(engines.values(), key=lambda e: e["symbols_per_s"])["symbols_per_s"]
    worst = max(e["e2e_p99_ms"] for e in engines.values())
    print(f"{len(engines)} detectors: the slowest {slowest} symbols/s, worst end-to-end p99 {worst:.0f} ms; "
          f"process {report['cores_used']:.2f} cores; load {report['machine']['load_avg_1m_at_end']}; target "
          f">= {need:.0f} symbols/s each, e2e p99 <= {END_TO_END_S:.0f} s: "
          f"{'met' if report['target']['met'] else 'MISSED by ' + ', '.join(sorted(missed))}")
    print(f"report: {out / 'comms_live.json'}")
    return 0 if report["target"]["met"] else 1
