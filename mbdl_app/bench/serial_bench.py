"""`mbdl bench serial`: the serial sensor driver at 1,000 lines/s for 60 s, lossless.

A writer process plays the device on a pseudo-terminal: NMEA-style sentences
`$MBDL,t,seq,v2,...*CS` at `rate` lines/s on absolute deadlines, `t` its
time.monotonic() at the write (CLOCK_MONOTONIC is system-wide, so the reader's clock
agrees), `seq` the line number, v_j = sin(0.001 * seq * j). It formats and checksums
its lines with its own code, not the driver's. The reader is
drivers.serial_sensor.SerialSensorSource on the pty's slave, read as the session's
acquisition thread does. Figures: lines sent, received, lost (a seq never seen), out
of order, values that differ from what was sent, lines rejected by reason; parse
latency (line complete -> Sample returned) and end-to-end latency (device write ->
Sample returned), p50/p99/max; the writer's lateness; the reader's CPU use.

A pty has no baud rate. On a real UART, 1,000 lines of ~60 bytes per second need
about 600 kbaud (10 bits per byte); USB-CDC devices are not limited by the baud.
POSIX only (pty).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tty
from pathlib import Path

import numpy as np

from drivers.serial_sensor import SerialSensorSource

_WRITER = r"""
import json, math, os, sys, time
fd, fields = int(sys.argv[1]), int(sys.argv[4])
rate, duration = float(sys.argv[2]), float(sys.argv[3])
n, period = int(round(rate * duration)), 1.0 / rate
late = []
t0 = time.monotonic() + 0.2
for k in range(n):
    due = t0 + k * period
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    t = time.monotonic()
    late.append(t - due)
    text = ",".join([repr(t), repr(float(k))] +
                    [repr(math.sin(0.001 * k * j)) for j in range(2, fields + 1)])
    body = ("MBDL," + text).encode()
    cs = 0
    for b in body:
        cs ^= b
    os.write(fd, b"$" + body + b"*%02X\r\n" % cs)
late.sort()
print(json.dumps({"sent": n, "late_p50_ms": 1e3 * late[n // 2],
                  "late_p99_ms": 1e3 * late[int(0.99 * (n - 1))], "late_max_ms": 1e3 * late[-1]}))
"""


def _ms(x: np.ndarray) -> dict:
    if len(x) == 0:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    p50, p99 = np.percentile(x, [50, 99])
    return {"p50_ms": 1e3 * p50, "p99_ms": 1e3 * p99, "max_ms": 1e3 * x.max()}


def run_serial_bench(out_dir: Path, rate: float = 1000, duration: float = 60.0,
                     fields: int = 3) -> dict:
    """Run the benchmark, print its figures, write out_dir/serial_bench.json, return them."""
    n = int(round(rate * duration))
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing: bytes pass as they are
    port = os.ttyname(slave)
    src = SerialSensorSource(port, fmt="nmea", fields=fields, rate=rate)
    seq = np.full(n, -1, np.int64)
    parse_lat, e2e_lat = np.empty(n), np.empty(n)
    bad_values, received = 0, 0
    try:
        src.open()  # before the writer starts: opening a port discards pending input
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(master), str(rate), str(duration), str(fields)],
            pass_fds=(master,), stdout=subprocess.PIPE, text=True)
        cpu0, wall0 = time.process_time(), time.monotonic()
        quiet_since = None
        while True:
            s = src.read(0.1)
            now = time.monotonic()
            if s is not None:
                quiet_since = None
                if received < n:
                    k = int(s.value[0])
                    seq[received], parse_lat[received], e2e_lat[received] = k, now - s.t_host, \
                        now - s.t
                    expect = [np.sin(0.001 * k * j) for j in range(2, fields + 1)]
                    bad_values += s.value[1:].tolist() != expect
                received += 1
                continue
            if writer.poll() is not None:
                quiet_since = quiet_since or now
                if received >= n or now - quiet_since > 1.0:
                    break
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        w = json.loads(writer.communicate()[0] or "{}")
    finally:
        src.close()
        os.close(master)
        os.close(slave)
    got = seq[: min(received, n)]
    unique = np.unique(got[(got >= 0) & (got < n)])
    sent = w.get("sent", n)
    report = {
        "machine": {"python": sys.version.split()[0], "cpus": os.cpu_count()},
        "rate_hz": rate, "duration_s": duration, "format": "nmea", "fields": fields,
        "sent": sent, "received": received, "lost": sent - len(unique),
        "out_of_order": int(np.sum(np.diff(got) <= 0)), "wrong_values": int(bad_values),
        "rejected": src.rejected,
        "parse_latency": _ms(parse_lat[: len(got)]), "end_to_end_latency": _ms(e2e_lat[: len(got)]),
        "writer_lateness": {k: v for k, v in w.items() if k != "sent"},
        "reader_cpu_percent": 100.0 * cpu / wall if wall else None,
        "wall_s": wall,
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "serial_bench.json").write_text(json.dumps(report, indent=2))
    pl, el = report["parse_latency"], report["end_to_end_latency"]
    print(f"serial bench: {rate:g} lines/s for {duration:g} s over a pty ({fields} fields, NMEA)")
    print(f"  sent {sent}  received {received}  lost {report['lost']}  "
          f"out of order {report['out_of_order']}  wrong values {bad_values}")
    print(f"  rejected {sum(report['rejected'].values())} {report['rejected']}")
    if pl["p50_ms"] is not None:
        print(f"  parse latency      p50 {pl['p50_ms']:.3f} ms  p99 {pl['p99_ms']:.3f} ms  "
              f"max {pl['max_ms']:.3f} ms")
        print(f"  end-to-end latency p50 {el['p50_ms']:.3f} ms  p99 {el['p99_ms']:.3f} ms  "
              f"max {el['max_ms']:.3f} ms")
    print(f"  writer lateness {report['writer_lateness']}  reader CPU "
          f"{report['reader_cpu_percent']:.1f} %")
    print(f"  report: {out_dir / 'serial_bench.json'}")
    return report
