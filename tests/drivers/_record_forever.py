"""Records synthetic frames and results until killed; the crash-safety tests' writer.

    python _record_forever.py FILE [--rate 100] [--size 64] [--truth 0] [--batch 1]

Frame i holds the value i everywhere (data, every truth array, and the result row of
the one engine "echo"), with index i and t = i / 100. After each append it prints
"<frames written> <time.monotonic()>" so the parent knows what was written when.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from drivers.base import Frame, SourceInfo
from drivers.recording import RecordingWriter, ResultRow, ResultSpec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--rate", type=float, default=100.0, help="frames/s; 0 = flat out")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--truth", type=int, default=0, help="number of truth arrays")
    parser.add_argument("--batch", type=int, default=1, help="frames per append")
    args = parser.parse_args()

    shape = (2, args.size, args.size)
    truth_shapes = {f"truth{k}": shape for k in range(args.truth)}
    info = SourceInfo("sim:test", "frames", shape, 100.0, {"size": args.size}, truth_shapes)
    spec = ResultSpec("cam", "echo", (1, *shape), info={"name": "echo"})
    writer = RecordingWriter(args.path, {"cam": info}, [spec], config={"test": True})
    print("ready", flush=True)
    n = 0
    t_start = time.monotonic()
    while True:
        frames = []
        for i in range(n, n + args.batch):
            x = np.full(shape, i, dtype=np.float32)
            frames.append(Frame(i, i / 100, x, {k: x for k in truth_shapes}))
        rows = [
            ResultRow(f.index, f.t, f.data[None], 0.001, (f.t_host, f.t_host, f.t_host))
            for f in frames
        ]
        writer.append_items("cam", frames)
        writer.append_results("cam", "echo", rows)
        n += args.batch
        sys.stdout.write(f"{n} {time.monotonic()}\n")
        sys.stdout.flush()
        writer.maybe_flush()
        if args.rate > 0:
            time.sleep(max(0.0, t_start + n / args.rate - time.monotonic()))


if __name__ == "__main__":
    main()
