"""Position/state sensors on a serial line: `serial:/dev/ttyUSB0?baud=115200&format=csv&fields=3`.

Line protocol, one reading per line ending in LF (a CR before it is ignored):

    csv:   t,v1,...,vm
    nmea:  $MBDL,t,v1,...,vm*CS     CS = two hex digits, the XOR of the bytes between
                                     `$` and `*` (as in NMEA 0183)

`t` is the device's timestamp in seconds, m = `fields`. A Sample has `t` = that device
time, `value` = (v1, ..., vm) float64, and `t_host` = time.monotonic() when the chunk
completing its line arrived. Numbers are anything Python's float() reads.

Robustness. Bytes are read in chunks (whatever `in_waiting` holds) and split into
lines here, so partial lines are joined across chunks. A bad line is dropped and
counted in `rejected` by reason, and the stream goes on with the next line:

    decode       non-ASCII bytes (line noise, a wrong baud rate)
    garbage      not a reading: a field that is not a number (also a CSV line torn by
                 a device reset and joined to the next), no `$MBDL,`/`*CS` frame, or
                 bytes before the `$` of a sentence (the sentence itself is still
                 parsed: `$` resynchronizes)
    field_count  numbers, but not 1 + m of them
    checksum     the sentence's CS does not match
    non_finite   a NaN or infinity
    overflow     a line longer than `max_line` bytes (1024), discarded up to its LF
    truncated    the partial line pending when the port disconnected

Disconnects. A read error (SerialException, OSError: unplug, port vanished, EIO)
closes the port and raises SourceError naming the port ONCE; later reads try to
reopen it with exponential backoff (0.1 s doubling to 5 s), return None while
waiting, and carry on when the port is back, index still increasing. read(timeout)
blocks at most timeout + 10 ms (the port's poll interval).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections import deque

import numpy as np
import serial

from drivers.base import Sample, SourceBase, SourceInfo
from drivers.errors import SourceError
from drivers.uri import ParsedURI

log = logging.getLogger(__name__)

FORMATS = ("csv", "nmea")
REASONS = ("decode", "garbage", "field_count", "checksum", "non_finite", "overflow", "truncated")
TALKER = b"$MBDL,"
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
_POLL_S = 0.01


def nmea_checksum(body: bytes) -> int:
    """XOR of the bytes of `body` (the text between `$` and `*`)."""
    cs = 0
    for b in body:
        cs ^= b
    return cs


def format_line(fmt: str, t: float, values) -> bytes:
    """One reading as the device sends it, LF-terminated (for simulators and tests)."""
    text = ",".join(repr(float(v)) for v in (t, *values))
    if fmt == "csv":
        return text.encode() + b"\n"
    body = b"MBDL," + text.encode()
    return b"$%s*%02X\r\n" % (body, nmea_checksum(body))


class SerialSensorSource(SourceBase):
    """Samples of a serial sensor; see the module docstring for the protocol and faults.

    open() opens the port (SourceError naming it on failure); read() from one
    acquisition thread. `rejected` counts dropped lines by reason, `reconnects` the
    successful reopenings since open().
    """

    def __init__(self, port: str, *, baud: int = 115200, fmt: str = "csv", fields: int = 3,
                 rate: float = 0.0, max_line: int = 1024, uri: str | None = None) -> None:
        self.port = port
        self.uri = uri or f"serial:{port}?baud={baud}&format={fmt}&fields={fields}"
        if fmt not in FORMATS:
            raise SourceError(f"{self.uri}: format must be one of {', '.join(FORMATS)}, "
                              f"got {fmt!r}")
        if fields < 1:
            raise SourceError(f"{self.uri}: fields must be >= 1, got {fields}")
        if baud < 1:
            raise SourceError(f"{self.uri}: baud must be >= 1, got {baud}")
        if not (rate >= 0 and math.isfinite(rate)):
            raise SourceError(f"{self.uri}: rate must be >= 0, got {rate}")
        self.baud, self.fmt, self.fields, self.rate = baud, fmt, fields, rate
        self.max_line = max_line
        self._serial: serial.Serial | None = None
        self._opened = False
        self._reset()

    def _reset(self) -> None:
        self._rejected = dict.fromkeys(REASONS, 0)
        self._buf = bytearray()
        self._skipping = False  # inside the tail of an overflowed line
        self._lines: deque[tuple[bytes, float]] = deque()  # complete lines, arrival time
        self._index = 0
        self.reconnects = 0
        self._backoff = BACKOFF_MIN_S
        self._retry_at = 0.0

    @property
    def rejected(self) -> dict[str, int]:
        """Lines dropped since open(), by reason (a copy)."""
        return dict(self._rejected)

    def _connect(self) -> serial.Serial:
        try:
            return serial.Serial(self.port, self.baud, timeout=_POLL_S,
                                 exclusive=True if os.name == "posix" else None)
        except (serial.SerialException, OSError, ValueError) as e:
            raise SourceError(f"{self.uri}: cannot open serial port {self.port} ({e})") from None

    def open(self) -> None:
        self.close()
        self._reset()
        self._serial = self._connect()
        self._opened = True
        self._info = SourceInfo(
            uri=self.uri, kind="samples", shape=(self.fields,), rate_hz=self.rate,
            meta={"device": f"serial {self.port}", "port": self.port, "baud": self.baud,
                  "format": self.fmt, "fields": self.fields, "max_line": self.max_line,
                  "t": "device clock, seconds"},
        )

    # --- bytes -> lines -------------------------------------------------------------

    def _feed(self, chunk: bytes, t_host: float) -> None:
        """Append a chunk; queue every line it completes with the chunk's arrival time."""
        buf = self._buf
        buf += chunk
        if b"\n" in chunk:
            *lines, rest = buf.split(b"\n")
            for line in lines:
                if self._skipping:
                    self._skipping = False
                elif len(line) > self.max_line:
                    self._rejected["overflow"] += 1
                else:
                    self._lines.append((bytes(line), t_host))
            buf = self._buf = bytearray(rest)
        if len(buf) > self.max_line:
            if not self._skipping:
                self._rejected["overflow"] += 1
            self._skipping = True
            buf.clear()

    # --- line -> Sample -------------------------------------------------------------

    def _reject(self, reason: str) -> None:
        self._rejected[reason] += 1

    def _parse(self, line: bytes, t_host: float) -> Sample | None:
        """The Sample of one line, or None (counted in `rejected`, or an empty line)."""
        line = line.strip()
        if not line:
            return None
        nmea = self.fmt == "nmea"
        if nmea:
            start = line.rfind(b"$")
            if start < 0:
                return self._reject("garbage" if line.isascii() else "decode")
            if start > 0:  # bytes before the sentence: a torn line or noise, then a resync
                self._reject("garbage")
                line = line[start:]
        if not line.isascii():
            return self._reject("decode")
        if nmea:
            star = len(line) - 3
            if not line.startswith(TALKER) or star < len(TALKER) or line[star] != 0x2A:  # "*"
                return self._reject("garbage")
            try:
                cs = int(line[star + 1:], 16)
            except ValueError:
                return self._reject("garbage")
            if nmea_checksum(line[1:star]) != cs:
                return self._reject("checksum")
            line = line[len(TALKER):star]
        try:
            numbers = [float(p) for p in line.split(b",")]
        except ValueError:
            return self._reject("garbage")
        if len(numbers) != self.fields + 1:
            return self._reject("field_count")
        if not all(map(math.isfinite, numbers)):
            return self._reject("non_finite")
        k = self._index
        self._index = k + 1
        return Sample(k, numbers[0], np.array(numbers[1:]), t_host=t_host)

    # --- the port -------------------------------------------------------------------

    def _disconnect(self, cause: Exception) -> SourceError:
        self._close_port()
        if self._buf and not self._skipping:
            self._rejected["truncated"] += 1
        self._buf.clear()
        self._skipping = False
        self._backoff = BACKOFF_MIN_S
        self._retry_at = time.monotonic() + self._backoff
        log.warning("%s: serial port %s disconnected (%s)", self.uri, self.port, cause)
        return SourceError(f"{self.uri}: serial port {self.port} disconnected ({cause}); "
                           "reconnecting")

    def _reconnect(self, deadline: float) -> bool:
        """Try to reopen the port when its backoff has passed (waiting until `deadline` at most)."""
        now = time.monotonic()
        if now < self._retry_at:
            time.sleep(max(0.0, min(self._retry_at, deadline) - now))
            if time.monotonic() < self._retry_at:
                return False
        try:
            self._serial = self._connect()
        except SourceError as e:
            self._backoff = min(2 * self._backoff, BACKOFF_MAX_S)
            self._retry_at = time.monotonic() + self._backoff
            log.debug("%s; next try in %.1f s", e, self._backoff)
            return False
        self.reconnects += 1
        log.info("%s: serial port %s reconnected", self.uri, self.port)
        return True

    def read(self, timeout: float = 0.1) -> Sample | None:
        """The next valid reading, or None if none completes within `timeout`.

        Raises SourceError once when the port disconnects (see the module docstring).
        """
        if not self._opened:
            raise SourceError(f"{self.uri}: source is not open")
        deadline = time.monotonic() + timeout
        while True:
            while self._lines:
                sample = self._parse(*self._lines.popleft())
                if sample is not None:
                    return sample
            ser = self._serial
            if ser is None:
                if not self._reconnect(deadline):
                    return None
                continue
            try:
                n = ser.in_waiting
                chunk = ser.read(n or 1)  # with nothing waiting: one byte or the poll interval
            except (serial.SerialException, OSError) as e:
                raise self._disconnect(e) from None
            if chunk:
                self._feed(chunk, time.monotonic())
            if not self._lines and time.monotonic() >= deadline:
                return None

    def _close_port(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError):
                pass  # a vanished port cannot be closed cleanly; its fd is gone either way
        self._serial = None

    def close(self) -> None:
        self._close_port()
        self._opened = False


def source_from_uri(parsed: ParsedURI) -> SerialSensorSource:
    """`serial:PORT?baud=115200&format=csv|nmea&fields=3&rate=0` (rate: nominal Hz, 0 unknown)."""
    parsed.check_known({"baud", "format", "fields", "rate"})
    if not parsed.target:
        raise SourceError(f"{parsed.uri}: no port given (serial:/dev/ttyUSB0 or serial:COM3)")
    return SerialSensorSource(parsed.target, baud=parsed.get("baud", 115200, int),
                              fmt=parsed.get("format", "csv").lower(),
                              fields=parsed.get("fields", 3, int),
                              rate=parsed.get("rate", 0.0, float), uri=parsed.uri)
