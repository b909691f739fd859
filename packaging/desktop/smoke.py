"""Smoke test of the frozen desktop bundle (packaging/desktop/build.sh's output), stdlib only:

    python3 packaging/desktop/smoke.py packaging/desktop/build/dist/mbdl/mbdl [--gui-runs 3] [--json F]

Each step runs the frozen binary as a user would and checks its exit code:
  help      `mbdl --help`
  run       `mbdl run --duration 5 --record R.h5 --quiet` headless (no DISPLAY): the default session
  info      `mbdl info R.h5`: the recording reads back (h5py inside the bundle)
  doctor    `mbdl doctor`: the platform report of a torch-free install
  gui       the GUI offscreen on the default session for a few seconds (the entry script's
            MBDL_SMOKE_GUI_S hook), `--gui-runs` times: exit code 0 and the time from the process's
            creation to the first frame an imaging view shows (median reported)
and checks that no torch is in the bundle, then prints the bundle's size and a one-line summary.
Exit code 0 when every step passed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _run(name: str, cmd: list[str], env: dict, timeout: float) -> dict:
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", e.stdout or "", e.stderr or ""
        out, err = (x.decode(errors="replace") if isinstance(x, bytes) else x for x in (out, err))
    wall = time.monotonic() - t0
    ok = rc == 0
    tail = (err.strip().splitlines() or [""])[-1][:200]
    print(f"{'PASS' if ok else 'FAIL'}  {name:<8} rc={rc} {wall:6.1f} s" + ("" if ok else f"  {tail}"),
          flush=True)
    return {"step": name, "rc": rc, "wall_s": round(wall, 2), "ok": ok, "stdout": out[-4000:],
            "stderr": err[-4000:]}


def folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Smoke-test the frozen MBDL Studio bundle.")
    ap.add_argument("binary", type=Path, help="the bundle's executable (dist/mbdl/mbdl)")
    ap.add_argument("--gui-runs", type=int, default=3, help="GUI starts (cold start: median of these)")
    ap.add_argument("--gui-seconds", type=float, default=8.0, help="seconds each GUI run stays up")
    ap.add_argument("--run-seconds", type=float, default=5.0, help="--duration of the headless run")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    exe = args.binary.resolve()
    if not exe.is_file() or not os.access(exe, os.X_OK):
        print(f"smoke.py: {args.binary}: not an executable file (build it: packaging/desktop/build.sh)",
              file=sys.stderr)
        return 2
    bundle = exe.parent
    base = {k: v for k, v in os.environ.items()
            if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM", "PYTHONPATH", "VIRTUAL_ENV")}
    steps = []
    with tempfile.TemporaryDirectory(prefix="mbdl-smoke-") as tmp:
        env = {**base, "HOME": tmp, "XDG_CACHE_HOME": str(Path(tmp) / "cache")}  # a fresh user: no caches
        rec = Path(tmp) / "smoke.h5"
        steps.append(_run("help", [str(exe), "--help"], env, 120))
        steps.append(_run("run", [str(exe), "run", "--duration", f"{args.run_seconds:g}",
                                  "--record", str(rec), "--quiet"], env, 180 + args.run_seconds))
        if steps[-1]["ok"] and "Engines" not in steps[-1]["stdout"]:
            steps[-1].update(ok=False, rc=f"{steps[-1]['rc']} (no engine table printed)")
        steps.append(_run("info", [str(exe), "info", str(rec)], env, 120))
        steps.append(_run("doctor", [str(exe), "doctor"], {**env, "QT_QPA_PLATFORM": "offscreen"}, 180))
        qt_line = next((ln for ln in steps[-1]["stdout"].splitlines() if ln.startswith("qt window")), "")
        if steps[-1]["ok"] and "platform offscreen" not in qt_line:  # the Qt probe runs inside the bundle
            steps[-1].update(ok=False, rc=f"{steps[-1]['rc']} (Qt probe: {qt_line or 'no qt line'})")
        firsts = []
        for i in range(args.gui_runs):
            s = _run(f"gui{i + 1}", [str(exe)], {**env, "QT_QPA_PLATFORM": "offscreen",
                                                  "MBDL_SMOKE_GUI_S": f"{args.gui_seconds:g}"},
                     240 + args.gui_seconds)
            m = re.search(r"first_frame_s=([\d.]+)", s["stdout"])
            s["first_frame_s"] = float(m[1]) if m else None
            if m:
                firsts.append(float(m[1]))
                print(f"      first frame after {float(m[1]):.2f} s", flush=True)
            steps.append(s)
    torch_files = [str(p.relative_to(bundle)) for p in bundle.rglob("*torch*")
                   if "torch" in p.name.lower().split(".")[0].split("-")]
    size = folder_mb(bundle)
    summary = {
        "binary": str(exe),
        "bundle_mb": round(size, 1),
        "torch_in_bundle": torch_files[:10],
        "gui_first_frame_s": firsts,
        "gui_first_frame_median_s": round(statistics.median(firsts), 3) if firsts else None,
        "load_average": os.getloadavg(),
        "exit_codes": {s["step"]: s["rc"] for s in steps},
        "steps": steps,
    }
    ok = all(s["ok"] for s in steps) and not torch_files
    print(f"{'PASS' if not torch_files else 'FAIL'}  no torch in the bundle"
          + (f": {', '.join(torch_files[:3])}" if torch_files else ""))
    print(f"bundle {size:.0f} MB; GUI first frame "
          + (f"median {summary['gui_first_frame_median_s']:.2f} s of {firsts}" if firsts else "never shown")
          + f"; load average {', '.join(f'{x:.1f}' for x in summary['load_average'])}")
    print(f"exit codes: {summary['exit_codes']}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
