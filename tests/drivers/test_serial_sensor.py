"""The serial sensor driver on real pseudo-terminals: a writer on the master side plays the
device, the driver reads the slave as a serial port."""

from __future__ import annotations

import operator
import os
import threading
import time
import tty
from functools import reduce
from pathlib import Path

import numpy as np
import pytest

from drivers import SourceError, open_source
from drivers.serial_sensor import REASONS, SerialSensorSource, format_line, nmea_checksum

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX")


class Pty:
    """A pty pair in raw mode; `port` is the slave's path, writes go to the master."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)

    def write(self, *chunks: bytes) -> None:
        self.feed(chunks)

    def feed(self, chunks, pause: float = 0.0) -> None:
        """Write the chunks one by one, `pause` seconds apart (separate reads on the port)."""
        for c in chunks:
            os.write(self.master, c)
            if pause:
                time.sleep(pause)

    def unplug(self) -> None:
        """Close the device side: the port's reads fail with EIO, as after a USB unplug."""
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)


@pytest.fixture
def pty():
    p = Pty()
    yield p
    p.close()


def writer(fn, *args) -> threading.Thread:
    th = threading.Thread(target=fn, args=args, daemon=True)
    th.start()
    return th


def collect(src, n: int, timeout: float = 5.0) -> list:
    """The next n samples (fewer if `timeout` passes first)."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        s = src.read(0.05)
        if s is not None:
            out.append(s)
    return out


def reference_checksum(body: bytes) -> int:
    return reduce(operator.xor, body, 0)


def sentence(body: str, cs: int | None = None) -> bytes:
    raw = body.encode()
    return b"$%s*%02X\r\n" % (raw, reference_checksum(raw) if cs is None else cs)


def values(k: int) -> list[float]:
    return [k * 0.5, -1e-3 * k, 1.0 / (k + 3)]


def test_csv_lines_split_anywhere_arrive_in_order_with_exact_values(pty):
    lines = [format_line("csv", 100.0 + k / 1000, values(k)) for k in range(300)]
    blob = b"".join(lines)
    cuts = np.sort(np.random.default_rng(0).choice(len(blob), 120, replace=False))
    chunks = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)], strict=True)]
    with SerialSensorSource(pty.port, fmt="csv", fields=3) as src:
        assert src.info.kind == "samples" and src.info.shape == (3,)
        writer(pty.write, *chunks)
        got = collect(src, 300)
        assert src.rejected == dict.fromkeys(REASONS, 0)
    assert [s.index for s in got] == list(range(300))
    for k, s in enumerate(got):
        assert s.t == 100.0 + k / 1000  # the device's timestamp
        assert s.value.dtype == np.float64 and s.value.tolist() == values(k)
    hosts = [s.t_host for s in got]
    assert hosts == sorted(hosts) and hosts[-1] <= time.monotonic()


def test_csv_bad_lines_are_counted_by_reason_and_never_stop_the_stream(pty):
    good = [format_line("csv", k, values(k)) for k in range(8)]
    stream = [
        good[0],
        b"hello world\n",  # garbage
        good[1],
        b"\x00\xff\xfe\x81\n",  # decode
        good[2],
        b"1.0,2.0\n",  # field_count
        b"1.0,2.0,3.0,4.0,5.0\n",  # field_count
        good[3],
        b"1.0,nan,2,3\n",  # non_finite
        b"1.0,2,-inf,3\r\n",  # non_finite
        good[4],
        b"7" * 3000 + b"\n",  # overflow
        good[5],
        b"3.0,1.",  # partial line: the device reset mid-line ...
        good[6],  # ... so it merges with the next one: "3.0,1.6.0,...", garbage
        b"\r\n\n",  # empty lines are no readings and no faults
        good[7],
    ]
    with SerialSensorSource(pty.port, fmt="csv", fields=3) as src:
        writer(pty.feed, stream, 0.002)
        got = collect(src, 7)
        time.sleep(0.05)
        assert src.read(0.1) is None
        rejected = src.rejected
    assert [s.value.tolist() for s in got] == [values(k) for k in (0, 1, 2, 3, 4, 5, 7)]
    assert [s.index for s in got] == list(range(7))
    assert rejected == {"decode": 1, "garbage": 2, "field_count": 2, "checksum": 0,
                        "non_finite": 2, "overflow": 1, "truncated": 0}


def test_nmea_checksum_is_the_xor_between_dollar_and_star():
    body = b"MBDL,1.5,2,3,4"
    assert nmea_checksum(body) == reference_checksum(body)
    line = format_line("nmea", 1.5, [2, 3, 4])
    assert line.startswith(b"$MBDL,1.5,2.0,3.0,4.0*") and line.endswith(b"\r\n")
    assert int(line[-4:-2], 16) == reference_checksum(line[1:-5])


def test_nmea_bad_sentences_are_counted_and_dollar_resynchronizes(pty):
    ok = [sentence(f"MBDL,{k},{k + 1},{k + 2},{k + 3}") for k in range(9)]
    stream = [
        ok[0],
        sentence("MBDL,1,2,3,4", cs=0x00),  # checksum
        ok[1],
        b"\xff\x00noise" + ok[2],  # garbage before the `$`: counted, the sentence kept
        b"$MBDL,5,6,7" + ok[3],  # a torn sentence, then a whole one: garbage, kept
        b"$MBDL,1,2,3,4\r\n",  # no *CS: garbage
        ok[4],
        sentence("MBDL,1,2,3"),  # field_count (checksum fine)
        sentence("MBDL,1,NaN,3,4"),  # non_finite
        sentence("GPGGA,1,2,3,4"),  # another talker: garbage
        ok[5],
        b"$MBDL,1,2,3,4*ZZ\r\n",  # garbage
        b"\xfe\xfd\xfc\n",  # decode
        ok[6],
        ok[7].lower().replace(b"$mbdl", b"$MBDL"),  # lowercase hex digits are fine
        b"$MBDL," + b"1," * 700 + b"1*00\r\n",  # overflow
        ok[8],
    ]
    with SerialSensorSource(pty.port, fmt="nmea", fields=3) as src:
        writer(pty.feed, stream, 0.002)
        got = collect(src, 9)
        rejected = src.rejected
    assert [s.t for s in got] == list(range(9))
    assert [s.value.tolist() for s in got] == [[k + 1, k + 2, k + 3] for k in range(9)]
    assert rejected == {"decode": 1, "garbage": 5, "field_count": 1, "checksum": 1,
                        "non_finite": 1, "overflow": 1, "truncated": 0}


def test_a_line_too_long_is_dropped_up_to_its_newline_across_chunks(pty):
    with SerialSensorSource(pty.port, fmt="csv", fields=1, max_line=64) as src:
        writer(pty.feed, [b"1," + b"9" * 50, b"9" * 50, b"9" * 50, b"\n2,3\n"], 0.01)
        got = collect(src, 1)
        assert src.rejected["overflow"] == 1
    assert [(s.t, s.value.tolist()) for s in got] == [(2.0, [3.0])]


def test_read_returns_none_within_its_timeout_when_the_device_is_quiet(pty):
    with SerialSensorSource(pty.port) as src:
        for timeout in (0.0, 0.05):
            t0 = time.monotonic()
            assert src.read(timeout) is None
            assert time.monotonic() - t0 < timeout + 0.03


def test_unplug_raises_once_naming_the_port_then_reconnects_and_continues(tmp_path):
    """A symlink stands for the device node: removed on unplug, back on a new pty."""
    link = tmp_path / "ttyUSB0"
    first = Pty()
    link.symlink_to(first.port)
    second = None
    errors, got = [], []
    try:
        with SerialSensorSource(str(link), fmt="csv", fields=3) as src:
            first.write(*(format_line("csv", k, values(k)) for k in range(5)))
            got += collect(src, 5)
            first.unplug()
            link.unlink()
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # the outage: one error, then quiet Nones
                try:
                    assert src.read(0.05) is None
                except SourceError as e:
                    errors.append(str(e))
            assert len(errors) == 1 and str(link) in errors[0]
            second = Pty()
            link.symlink_to(second.port)
            stop = threading.Event()

            def device():  # keeps sending, as a sensor does; lines before the reopen are lost
                k = 5
                while not stop.is_set():
                    second.write(format_line("csv", k, values(k)))
                    k += 1
                    time.sleep(0.005)

            th = writer(device)
            got += collect(src, 20, timeout=10.0)
            stop.set()
            th.join()
            assert src.reconnects == 1
            assert src.rejected["field_count"] + src.rejected["garbage"] <= 1  # a torn first line
    finally:
        first.close()
        if second:
            second.close()
    assert len(errors) == 1
    assert [s.index for s in got] == list(range(25))  # the index goes on across the outage
    ks = [int(s.t) for s in got]
    assert ks[:5] == list(range(5)) and ks[5:] == sorted(ks[5:]) and ks[5] >= 5
    assert all(s.value.tolist() == values(int(s.t)) for s in got)


def test_opening_a_missing_port_is_a_source_error_naming_it(tmp_path):
    port = tmp_path / "ttyACM7"
    with pytest.raises(SourceError, match="ttyACM7"):
        open_source(f"serial:{port}?baud=9600").open()


def test_serial_uri_parameters_reach_the_source_and_bad_ones_are_errors_naming_them(pty):
    src = open_source(f"serial:{pty.port}?baud=57600&format=nmea&fields=2&rate=100")
    assert isinstance(src, SerialSensorSource)
    assert (src.port, src.baud, src.fmt, src.fields) == (pty.port, 57600, "nmea", 2)
    with src:
        assert src.info.shape == (2,) and src.info.rate_hz == 100
        assert src.info.meta["format"] == "nmea" and src.info.meta["port"] == pty.port
    for bad, why in (("format=json", "format"), ("fields=0", "fields"), ("baud=fast", "baud"),
                     ("parity=E", "unknown parameter")):
        with pytest.raises(SourceError, match=why):
            open_source(f"serial:{pty.port}?{bad}")


def test_lossless_at_1000_lines_per_second_for_2_seconds(tmp_path):
    """The short form of `mbdl bench serial` (60 s): every valid line arrives, in order."""
    from mbdl_app.bench.serial_bench import run_serial_bench

    r = run_serial_bench(Path(tmp_path), rate=1000, duration=2.0)
    assert r["sent"] == 2000 and r["received"] == 2000
    assert r["lost"] == 0 and r["out_of_order"] == 0 and r["wrong_values"] == 0
    assert sum(r["rejected"].values()) == 0
