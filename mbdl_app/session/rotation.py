"""Long unattended runs (a Jetson under systemd): recording rotation, a disk budget, a health line.

    mbdl run --record /var/lib/mbdl/rec.h5 --rotate-min 10 --keep-gb 20 --health-s 60 --quiet

`RecordingRotation` names the files `rec-000001-20261206T191500Z.h5`, `rec-000002-...` beside the
given path: the sequence number goes on from the highest one already there (a restarted service
never overwrites a file, and the order survives a wrong clock: a Jetson without network boots in
1970), the UTC time is for people. Every `period_s` the session switches to the next file
(`Session.rotate_recording`: no item or result is lost or written twice at the boundary, so the
rows of consecutive files are contiguous in index); then the oldest closed files of the series are
deleted while the series holds more than `keep_bytes` (the file being written is never deleted).

`health_line` is one line of `key=value` groups for the journal: frames/samples per second per
source, each engine's compute latency p50/p99 and rate, what was dropped (source gaps, frames an
engine skipped), the recorder's backlog and the disk used by the series beside the budget and the
free space left. `Housekeeping.tick` does both from the headless run loop's once-a-second tick.
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

from mbdl_app.errors import ConfigError

log = logging.getLogger(__name__)

GB = 1e9


def _gb(n: float) -> str:
    """A size in the unit that shows it: `512KB`, `3.4MB`, `1.21GB`."""
    for unit, scale in (("GB", GB), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" if unit == "GB" else f"{n / scale:.1f}{unit}"
    return f"{n / 1e3:.0f}KB"


class RecordingRotation:
    """A series of recordings `STEM-NNNNNN-UTC.h5` in one folder, rotated and pruned."""

    def __init__(self, base: str | Path, period_s: float, keep_bytes: float | None = None,
                 clock=time.monotonic) -> None:
        base = Path(base)
        if not period_s > 0:
            raise ConfigError(f"--rotate-min: the rotation period must be > 0 (got {period_s / 60:g} min)")
        if keep_bytes is not None and not keep_bytes > 0:
            raise ConfigError(f"--keep-gb: the disk budget must be > 0 (got {keep_bytes / GB:g} GB)")
        if base.is_dir():
            raise ConfigError(f"--record {base}: is a folder; with --rotate-min give a file name "
                              "(e.g. DIR/rec.h5: files DIR/rec-000001-<UTC time>.h5, ...)")
        self.folder = base.parent
        self.stem = base.stem if base.suffix == ".h5" else base.name
        self.period_s = float(period_s)
        self.keep_bytes = keep_bytes
        self._clock = clock
        self._pattern = re.compile(rf"^{re.escape(self.stem)}-(\d{{6,}})-\d{{8}}T\d{{6}}Z\.h5$")
        self.current: Path | None = None
        self._opened_at = math.nan
        self.rotations = 0
        self.pruned: list[Path] = []

    def files(self) -> list[Path]:
        """The series' files on disk, oldest first (by sequence number)."""
        if not self.folder.is_dir():
            return []
        found = [(int(m[1]), p) for p in self.folder.iterdir() if (m := self._pattern.match(p.name))]
        return [p for _, p in sorted(found)]

    def _next_path(self) -> Path:
        files = self.files()
        seq = int(self._pattern.match(files[-1].name)[1]) + 1 if files else 1
        if self.current is not None:  # a file of ours not yet on disk still takes its number
            seq = max(seq, int(self._pattern.match(self.current.name)[1]) + 1)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        return self.folder / f"{self.stem}-{seq:06d}-{stamp}.h5"

    def first_path(self) -> Path:
        """The file the session starts recording into; starts the period's clock."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.current = self._next_path()
        self._opened_at = self._clock()
        self.prune()  # a restarted service may find the series over its budget
        return self.current

    def due(self) -> bool:
        return self.current is not None and self._clock() - self._opened_at >= self.period_s

    def rotate(self, session) -> Path:
        """Switch `session` to the next file now; prune; returns the closed file's path."""
        new = self._next_path()
        closed = session.rotate_recording(new)
        self.current, self._opened_at = new, self._clock()
        self.rotations += 1
        self.prune()
        return closed

    def postpone(self, since: float | None = None) -> None:
        """Start the current file's period again, now (after a failed rotation) or at `since`
        (the clock's time the session began recording)."""
        self._opened_at = self._clock() if since is None else since

    def maybe_rotate(self, session) -> Path | None:
        """Rotate when the period is over; the closed file's path, else None."""
        return self.rotate(session) if self.due() else None

    def disk_used(self) -> int:
        total = 0
        for p in self.files():
            try:
                total += p.stat().st_size
            except FileNotFoundError:  # deleted by hand meanwhile
                pass
        return total

    def prune(self) -> list[Path]:
        """Delete the oldest closed files while the series exceeds the budget; the deleted paths."""
        if self.keep_bytes is None:
            return []
        files = self.files()
        sizes = {p: p.stat().st_size for p in files}
        total = sum(sizes.values())
        deleted = []
        for p in files:
            if total <= self.keep_bytes or p == self.current:
                break
            try:
                p.unlink()
            except OSError as e:
                log.warning("recording rotation: cannot delete %s: %s", p, e)
                break
            total -= sizes[p]
            deleted.append(p)
            print(f"mbdl: pruned {p.name} ({_gb(sizes[p])}): the recordings exceeded "
                  f"--keep-gb {self.keep_bytes / GB:g}", file=sys.stderr, flush=True)
        self.pruned += deleted
        return deleted


def health_line(st, rotation: RecordingRotation | None = None) -> str:
    """One line for the journal, e.g. `mbdl health t=600s | fps ceus=20.0 lorenz=200.0 | engines
    svd-filter=1.0/s,p50=3.1ms,p99=6.2ms ... | dropped gaps=0 skipped=2 | rec q=0 file=rec-000003-...h5 |
    disk used=1.21GB budget=20.00GB free=40.10GB | rss=412MB`."""

    def f(v, fmt=".1f"):
        return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    parts = [f"mbdl health t={st.elapsed_s:.0f}s"]
    parts.append("fps " + " ".join(
        f"{n}={f(s['fps'])}" + ("" if s["state"] == "running" else f"[{s['state']}]")
        for n, s in st.sources.items()))
    if st.engines:
        parts.append("engines " + " ".join(
            f"{n}={f(e['fps'])}/s,p50={f(e['latency_p50_ms'], '.2f')}ms,p99={f(e['latency_p99_ms'], '.2f')}ms"
            + ("" if e["state"] == "running" else f"[{e['state']}]")
            for n, e in st.engines.items()))
    gaps = sum(int(s.get("gaps", 0)) for s in st.sources.values())
    skipped = sum(int(e.get("skipped", 0)) for e in st.engines.values())
    parts.append(f"dropped gaps={gaps} skipped={skipped}")
    rec = st.recorder
    if rec:
        parts.append(f"rec q={rec['backlog']} file={Path(rec['path']).name}"
                     + ("" if rec["state"] in ("running", "closed") else f" [{rec['state'].upper()}]"))
        where = Path(rec["path"]).parent
        if rotation is not None:
            used = rotation.disk_used()
            budget = f" budget={_gb(rotation.keep_bytes)}" if rotation.keep_bytes else ""
            files = f" files={len(rotation.files())}"
        else:
            p = Path(rec["path"])
            used, budget, files = (p.stat().st_size if p.exists() else 0), "", ""
        try:
            free = f" free={_gb(shutil.disk_usage(where).free)}"
        except OSError:
            free = ""
        parts.append(f"disk used={_gb(used)}{budget}{files}{free}")
    parts.append(f"rss={st.rss_mb:.0f}MB")
    return " | ".join(parts)


class Housekeeping:
    """What the headless loop does on each tick of a long run: rotate, prune, print a health line."""

    def __init__(self, rotation: RecordingRotation | None = None, health_s: float | None = None,
                 out: TextIO | None = None, clock=time.monotonic) -> None:
        if health_s is not None and not health_s > 0:
            raise ConfigError(f"--health-s: the health line's period must be > 0 s (got {health_s:g})")
        self.rotation = rotation
        self.health_s = health_s
        self.out = out
        self._clock = clock
        self._next_health = clock() + health_s if health_s else math.inf
        self._anchored = False
        self.lines = 0

    def tick(self, session, st) -> None:
        if not self._anchored:  # the periods run from the session's start, not from building it
            self._anchored = True
            started = self._clock() - st.elapsed_s
            if self.rotation is not None:
                self.rotation.postpone(started)
            if self.health_s:
                self._next_health = started + self.health_s
        if self.rotation is not None and self.rotation.due():
            try:
                self.rotation.rotate(session)
            except Exception as e:  # a full disk must not stop acquisition: go on in the old file
                print(f"mbdl: rotation to a new file failed ({type(e).__name__}: {e}); "
                      "still recording to the current file", file=sys.stderr, flush=True)
                self.rotation.postpone()
            else:
                st = session.status()  # the health line names the new file
        if self.rotation is not None:
            self.rotation.prune()  # the file being written grows: the older ones make room
        now = self._clock()
        if now >= self._next_health:
            self._next_health = max(self._next_health + self.health_s, now)
            print(health_line(st, self.rotation), file=self.out or sys.stderr, flush=True)
            self.lines += 1


def from_options(record: Path | None, rotate_min: float | None, keep_gb: float | None,
                 health_s: float | None) -> tuple[Path | None, Housekeeping | None]:
    """`mbdl run`'s --record/--rotate-min/--keep-gb/--health-s as (first file, housekeeping)."""
    if rotate_min is None:
        if keep_gb is not None:
            raise ConfigError("--keep-gb needs --rotate-min (the budget prunes rotated files)")
        return record, (Housekeeping(None, health_s) if health_s is not None else None)
    if record is None:
        raise ConfigError("--rotate-min needs --record FILE (the rotated files are named after it)")
    rotation = RecordingRotation(record, 60.0 * rotate_min, keep_gb * GB if keep_gb is not None else None)
    housekeeping = Housekeeping(rotation, health_s)
    return rotation.first_path(), housekeeping
