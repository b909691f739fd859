"""Peak memory of one artifact on one backend at one batch size, measured in a fresh process.

The peak resident set size (`ru_maxrss`) of a process that imports the runtimes, loads the
artifact, and calls it twice at the batch size: what a device (a Jetson Orin Nano has 8 GB
shared with its GPU) must hold for that engine alone. A fresh process per measurement,
because a process's peak never goes down and backends share one process in `mbdl bench
engines`. Reported beside it: the peak after loading (imports + weights + session), so the
difference is the engine's working memory at that batch.

    python -m mbdl_app.bench.peak_rss ARTIFACT_FOLDER BACKEND BATCH   -> one JSON line
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

TARGET_MIB = 1024  # issue 15: every shipped artifact at batch 8 on torch and ONNX Runtime
INPUT_STD = 0.3


def _peak_mib() -> float:
    """This process's peak RSS in MiB: VmHWM of /proc/self/status on Linux (the high-water mark of
    this program's own memory, which execve starts afresh), ru_maxrss elsewhere. Not ru_maxrss
    on Linux: the kernel carries the PARENT's peak at fork into the child's ru_maxrss across the
    exec, so every child of a bench that had grown to 1.4 GB reported 1.4 GB (measured: all
    artifacts after the ultrasound ones "over target" in one `mbdl bench engines` run)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1024 ** 2 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere


def measure_here(folder: Path, backend: str, batch: int) -> dict[str, Any]:
    """Load and call in this process (the child's side): peaks in MiB."""
    import numpy as np

    from engines.load import load_artifact
    from engines.runtime.backends import example_shape, timed_call
    from engines.runtime.threads import set_intra_op_threads

    set_intra_op_threads(1)
    engine = load_artifact(folder, backend)
    after_load = _peak_mib()
    shape = example_shape(engine.card, engine.info)
    x = (INPUT_STD * np.random.default_rng(0).standard_normal((batch, *shape))).astype(np.float32)
    for _ in range(2):  # the second call: buffers a runtime keeps from the first are reused, not added
        if hasattr(engine, "reset"):
            engine.reset(batch)
        timed_call(engine, x)
    return {"batch": batch, "peak_rss_after_load_mib": round(after_load, 1),
            "peak_rss_mib": round(_peak_mib(), 1)}


def measure_peak(folder: str | Path, backend: str, batch: int = 8,
                 timeout_s: float = 600.0) -> dict[str, Any]:
    """`measure_here` in a fresh Python process; {"error": ...} (one line) if the child failed."""
    proc = subprocess.run([sys.executable, "-m", "mbdl_app.bench.peak_rss", str(folder), backend, str(batch)],
                          capture_output=True, text=True, timeout=timeout_s)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"batch": batch, "error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m mbdl_app.bench.peak_rss ARTIFACT_FOLDER BACKEND BATCH", file=sys.stderr)
        return 2
    folder, backend, batch = Path(argv[0]), argv[1], argv[2]
    if not batch.isdigit() or int(batch) < 1:
        print(f"BATCH must be a positive integer, got {batch!r}", file=sys.stderr)
        return 2
    print(json.dumps(measure_here(folder, backend, int(batch))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
