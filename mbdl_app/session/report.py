"""Human-readable session reports: a one-line status per second and a final table."""

from __future__ import annotations

import math
import sys

from rich.console import Console
from rich.table import Table

from mbdl_app.session.session import SessionStatus


def _f(v: float, fmt: str = ".1f") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def source_setup(s: dict) -> str:
    """A source's size and nominal rate, e.g. `48x48@25Hz` (frames) or `@500Hz` (samples)."""
    shape = s.get("shape") or []
    size = "x".join(str(v) for v in shape[-2:]) if s.get("kind") == "frames" else ""
    return f"{size}@{s['nominal_hz']:g}Hz"


def setup_line(st: SessionStatus) -> str:
    """What runs on what, e.g. `ceus 48x48@25Hz: svd-filter/20, corona-ceus/20, ulm-lista · lorenz
    @500Hz: ekf, kalmannet-lorenz` (live maps, which follow their engine, left out)."""
    groups = []
    for name, s in st.sources.items():
        labels = [f"{label}/{e['hop']}" if e.get("hop", 1) > 1 else label
                  for label, e in st.engines.items()
                  if e["stream"] == name and not e["task"].endswith("-map")]
        groups.append(f"{name} {source_setup(s)}" + (f": {', '.join(labels)}" if labels else ""))
    return " · ".join(groups)


def status_line(st: SessionStatus) -> str:
    """E.g. `t=5s | ceus 48x48@25Hz 25.0/s | svd-filter/20 25.0/s p99 6.1ms | rec q=2 | 310MB`:
    each source's size and nominal rate, each windowed engine's hop (`/HOP`, as `--engine`)."""
    parts = [f"t={st.elapsed_s:.0f}s"]
    for name, s in st.sources.items():
        flag = "" if s["state"] == "running" else f" [{s['state']}]"
        parts.append(f"{name} {source_setup(s)} {_f(s['fps'])}/s{flag}")
    for label, e in st.engines.items():
        name = f"{label}/{e['hop']}" if e.get("hop", 1) > 1 else label
        flag = "" if e["state"] == "running" else f" [{e['state']}]"
        mse = "" if math.isnan(e["mse_db"]) else f" {_f(e['mse_db'])}dB"
        mse += "" if math.isnan(e.get("ser", math.nan)) else f" SER {e['ser']:.2e}"
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
                "p99 ms", "e2e p99 ms", "skipped", "gated", "MSE dB", "SER")
        for col in cols:
            eng.add_column(col, justify="left" if col in cols[:4] else "right")
        for name, e in st.engines.items():
            eng.add_row(name, e["family"], e["backend"], e["state"], str(e["results"]),
                        _f(e["results"] / max(st.elapsed_s, 1e-9)), _f(e["latency_p50_ms"], ".2f"),
                        _f(e["latency_p95_ms"], ".2f"), _f(e["latency_p99_ms"], ".2f"),
                        _f(e["e2e_p99_ms"], ".2f"), str(e["skipped"]), str(e["gated"]),
                        _f(e["mse_db_overall"], ".2f"),
                        _f(e.get("ser_overall"), ".2e"))
        console.print(eng)
        for name, e in st.engines.items():
            if e["error"]:
                console.print(f"[red]{name}: {e['error']}[/red]")
    if st.recorder:
        r = st.recorder
        written = ", ".join(f"{k}={v}" for k, v in r["written"].items())
        console.print(f"recording {r['path']} [{r['state']}]: {written}; "
                      f"max backlog {r['max_backlog']}" + (f"; {r['error']}" if r["error"] else ""))
