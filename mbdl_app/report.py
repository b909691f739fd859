"""Human-readable session reports: a one-line status per second and a final table."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.table import Table

from mbdl_app.session.session import SessionStatus


def _f(v: float, fmt: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def status_line(st: SessionStatus) -> str:
    """E.g. `t=5s | ceus 100.0/s | svd-filter 48.0/s p99 6.1ms | rec q=2 | 310MB`."""
    parts = [f"t={st.elapsed_s:.0f}s"]
    for name, s in st.sources.items():
        flag = "" if s["state"] == "running" else f" [{s['state']}]"
        parts.append(f"{name} {_f(s['fps'])}/s{flag}")
    for name, e in st.engines.items():
        flag = "" if e["state"] == "running" else f" [{e['state']}]"
        mse = "" if math.isnan(e["mse_db"]) else f" {_f(e['mse_db'])}dB"
        parts.append(f"{name} {_f(e['fps'])}/s p99 {_f(e['latency_p99_ms'], '.2f')}ms{mse}{flag}")
    if st.recorder:
        parts.append(f"rec q={st.recorder['backlog']}"
                     + ("" if st.recorder["state"] in ("running", "closed") else " [FAILED]"))
    parts.append(f"{st.rss_mb:.0f}MB")
    return " | ".join(parts)


def final_tables(st: SessionStatus, console: Console | None = None) -> None:
    """Print the sources, engines and recorder tables of a finished session."""
    # piped output (CI logs, files) gets a wide table instead of truncated names
    console = console or Console(width=None if sys.stdout.isatty() else 180)
    src = Table(title=f"Sources ({st.elapsed_s:.1f} s)")
    for col in ("source", "state", "items", "fps", "nominal Hz", "gaps", "max lag ms"):
        src.add_column(col, justify="right" if col not in ("source", "state") else "left")
    for name, s in st.sources.items():
        src.add_row(name, s["state"], str(s["items"]), _f(s["items"] / max(st.elapsed_s, 1e-9)),
                    _f(s["nominal_hz"]), str(s["gaps"]), _f(s["max_lag_ms"], ".2f"))
    console.print(src)
    if st.engines:
        eng = Table(title="Engines")
        cols = ("engine", "family", "backend", "state", "results", "fps", "p50 ms", "p95 ms",
                "p99 ms", "e2e p99 ms", "skipped", "MSE dB")
        for col in cols:
            eng.add_column(col, justify="left" if col in cols[:4] else "right")
        for name, e in st.engines.items():
            eng.add_row(name, e["family"], e["backend"], e["state"], str(e["results"]),
                        _f(e["results"] / max(st.elapsed_s, 1e-9)), _f(e["latency_p50_ms"], ".2f"),
                        _f(e["latency_p95_ms"], ".2f"), _f(e["latency_p99_ms"], ".2f"),
                        _f(e["e2e_p99_ms"], ".2f"), str(e["skipped"]), _f(e["mse_db_overall"], ".2f"))
        console.print(eng)
        for name, e in st.engines.items():
            if e["error"]:
                console.print(f"[red]{name}: {e['error']}[/red]")
    if st.recorder:
        r = st.recorder
        written = ", ".join(f"{k}={v}" for k, v in r["written"].items())
        console.print(f"recording {r['path']} [{r['state']}]: {written}; "
                      f"max backlog {r['max_backlog']}" + (f"; {r['error']}" if r["error"] else ""))
