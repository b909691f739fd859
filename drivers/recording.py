"""Session recordings: one HDF5 file per session, its writer, its reader and its replay.

Layout (root attribute format = "mbdl-studio-recording", format_version = 1):

    /                            format, format_version, created (ISO 8601 UTC),
                                 config (JSON), versions (JSON: app, engine artifact sha256)
    /streams/<name>/             uri, kind, shape, rate_hz, meta (JSON), truth_shapes (JSON)
        t (n,) f8   index (n,) i8   t_host (n,) f8   data (n, *shape)   truth/<key> (n, *shape_k)
        committed () i8
    /results/<stream>/<engine>/  info (JSON), shape, cov_shape (JSON; null when no cov)
        index (n,) i8   t (n,) f8   data (n, *shape) f4   latency (n,) f8
        t_host (n, 3) f8 [acquired, infer start, infer end]   [cov (n, *cov_shape) f4]
        [gated (n,) u1: trackers (info task "tracking"); 1 = the step predicted through,
         its observation missing (non-finite) or gated as an outlier]
        committed () i8

Frame data and frame truth are float32, sample values and sample truth float64: the
dtypes of Frame and Sample, so a replay gives back the recorded items bit for bit.
Every time series is chunked along time (at most 1 MiB and 1024 rows per chunk; one row
when a row is bigger) and grows by one resize and one slab write per append call.

Crash safety. The writer creates every group, attribute and dataset up front and then
switches the file to SWMR mode (single writer, multiple readers; HDF5 >= 1.10 file
format). In that mode HDF5 orders its metadata writes so that the bytes on disk always
form a file a reader can open, and what the process wrote survives its being killed
(it is in the OS page cache; a power cut is another matter: nothing here fsyncs). A
dataset's new length may reach the disk before its rows do (when HDF5 evicts metadata
between flushes), so a flush writes all rows, then stores each series' row count in
`committed`, then flushes again: a row counted in `committed` is on disk. The writer
thread flushes every `flush_interval` (0.5 s), so a kill loses at most the last second.

A killed writer. SWMR needs the version-3 superblock, whose status flags say "open for
write" until the writer closes the file; after a kill they stay set, and plain readers
(h5py.File(path), HDFView) refuse the file ("may use <h5clear file>"). Writing without
SWMR would leave no flags but also no write ordering and no live readers, so the flags
are cleared after the fact instead: `repair_recording` does what `h5clear -s` does (HDF5's
own clear-status-flags open) and trims every series to its committed rows, after which
the file is a closed recording that any HDF5 reader opens. The reader does it by itself
when it meets such a file (`mbdl info`, replay). A running writer holds a shared lock
(flock) on its file, HDF5 readers hold one while open, and repair needs the exclusive
lock: a file another process still writes or reads is never repaired, only read as a
SWMR reader (the committed rows, and rows flushed since).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from drivers.base import Frame, Item, Sample, SourceBase, SourceInfo, check_pacing
from drivers.errors import FormatError, RecordingError, SourceEnded, SourceError
from drivers.uri import ParsedURI

log = logging.getLogger(__name__)

FORMAT = "mbdl-studio-recording"
FORMAT_VERSION = 1

_CHUNK_BYTES = 1 << 20  # a chunk holds at most 1 MiB ...
_CHUNK_ROWS = 1024  # ... and at most this many rows, so a flush rewrites little
_COMPRESS_BYTES = 256 * 1024  # rows at least this large are LZF-compressed
_CHUNK_CACHE_BYTES = 2 << 20  # per dataset: the chunk being filled and one more
_LIBVER = ("v110", "v110")  # the oldest format with SWMR: readable by HDF5 >= 1.10
_ITEM_DTYPE = {"frames": np.float32, "samples": np.float64}


@dataclass(frozen=True, slots=True)
class ResultSpec:
    """One engine's result series on one stream, declared when the recording starts.

    shape: one result row (an engine's output for one window, e.g. (1, 2, H, W));
    cov_shape: one covariance row for trackers, None when the engine gives none;
    info: the engine's EngineInfo as a JSON-serializable dict.
    """

    stream: str
    engine: str
    shape: tuple[int, ...]
    cov_shape: tuple[int, ...] | None = None
    info: dict = field(default_factory=dict)


@dataclass(slots=True)
class ResultRow:
    """One engine output: `index`, `t` of the newest input item; `latency` compute
    seconds; `t_host` the monotonic stamps (acquired, infer start, infer end)."""

    index: int
    t: float
    data: np.ndarray
    latency: float
    t_host: tuple[float, float, float]
    cov: np.ndarray | None = None
    gated: bool = False  # a tracker's observation was not used (missing or an outlier)


class _Series:
    """Datasets in one group that grow together along time, plus their `committed` count."""

    def __init__(self, group: h5py.Group, datasets: dict[str, h5py.Dataset]) -> None:
        self.group = group
        self.datasets = datasets
        self.committed: h5py.Dataset = group["committed"]
        self.n = 0  # rows written (writer) or rows readable (reader)

    @classmethod
    def create(
        cls,
        group: h5py.Group,
        attrs: dict[str, Any],
        columns: dict[str, tuple[Any, tuple[int, ...]]],
    ) -> _Series:
        """Set `attrs`; create one resizable dataset per column: name -> (dtype, row shape)."""
        group.attrs.update(attrs)
        datasets = {}
        for name, (dtype, row) in columns.items():
            row_bytes = np.dtype(dtype).itemsize * math.prod(row)
            rows = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // max(row_bytes, 1)))
            # super-resolved images and maps (>= 256 KiB a row, mostly zeros) are stored LZF-
            # compressed: 60 s of the microscopy session took 3.5 GB raw; frames stay raw (noise
            # does not compress, and acquisition-rate streams must cost the writer nothing extra)
            big = row_bytes >= _COMPRESS_BYTES
            datasets[name] = group.create_dataset(
                name,
                shape=(0, *row),
                maxshape=(None, *row),
                chunks=(rows, *row),
                dtype=dtype,
                **({"compression": "lzf", "shuffle": True} if big else {}),
            )
        group.create_dataset("committed", data=np.int64(0))
        return cls(group, datasets)

    def append(self, columns: dict[str, np.ndarray]) -> None:
        k = len(columns["index"])
        for name, ds in self.datasets.items():
            ds.resize(self.n + k, axis=0)
            ds[self.n : self.n + k] = columns[name]
        self.n += k

    def commit(self) -> None:
        if int(self.committed[()]) != self.n:
            self.committed[()] = self.n

    def refresh(self) -> None:
        """Re-read extents and counts a SWMR writer flushed since the last look."""
        for ds in (*self.datasets.values(), self.committed):
            ds.refresh()

    def readable_rows(self, strict: bool, where: str) -> int:
        """Rows that every dataset holds and the writer committed.

        strict (a file the writer closed): no dataset may be shorter than `committed`.
        Rows past it are the remains of an append that failed (say, a full disk).
        """
        lengths = {name: ds.shape[0] for name, ds in self.datasets.items()}
        committed = int(self.committed[()])
        if strict and min(lengths.values()) < committed:
            raise FormatError(
                f"{where}: inconsistent lengths {lengths} ({committed} rows committed)"
            )
        return min(committed, *lengths.values())


def _to_json(obj: Any, what: str, path: str) -> str:
    def plain(x: Any) -> Any:
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, os.PathLike):
            return os.fspath(x)
        raise TypeError(f"{type(x).__name__} is not JSON-serializable")

    try:
        return json.dumps(obj, default=plain)
    except (TypeError, ValueError) as e:
        raise RecordingError(f"cannot write recording {path}: {what}: {e}") from None


def _check_name(name: str, what: str, path: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise RecordingError(
            f"cannot write recording {path}: {what} name {name!r} must be a non-empty "
            "string without '/'"
        )


_Layout = tuple[dict[str, Any], dict[str, tuple[Any, tuple[int, ...]]]]


def _stream_layout(name: str, info: SourceInfo, path: str) -> _Layout:
    """Attributes and columns (name -> (dtype, row shape)) of /streams/<name>."""
    attrs = {
        "uri": info.uri,
        "kind": info.kind,
        "shape": np.asarray(info.shape, dtype=np.int64),
        "rate_hz": float(info.rate_hz),
        "meta": _to_json(info.meta, f"meta of stream {name!r}", path),
        "truth_shapes": _to_json(
            {k: list(s) for k, s in info.truth_shapes.items()},
            f"truth_shapes of stream {name!r}",
            path,
        ),
    }
    dtype = _ITEM_DTYPE[info.kind]
    columns = {
        "t": (np.float64, ()),
        "index": (np.int64, ()),
        "t_host": (np.float64, ()),
        "data": (dtype, tuple(info.shape)),
    }
    for key, shape in info.truth_shapes.items():
        columns[f"truth/{key}"] = (dtype, tuple(shape))
    return attrs, columns


def _result_layout(spec: ResultSpec, path: str) -> _Layout:
    """Attributes and columns of /results/<stream>/<engine>."""
    attrs = {
        "info": _to_json(spec.info, f"info of engine {spec.engine!r}", path),
        "shape": np.asarray(spec.shape, dtype=np.int64),
        "cov_shape": json.dumps(None if spec.cov_shape is None else list(spec.cov_shape)),
    }
    columns = {
        "index": (np.int64, ()),
        "t": (np.float64, ()),
        "data": (np.float32, tuple(spec.shape)),
        "latency": (np.float64, ()),
        "t_host": (np.float64, (3,)),
    }
    if spec.cov_shape is not None:
        columns["cov"] = (np.float32, tuple(spec.cov_shape))
    if spec.info.get("task") == "tracking":  # which steps predicted through (gated / missing y)
        columns["gated"] = (np.uint8, ())
    return attrs, columns


class RecordingWriter:
    """Writes one session to one HDF5 file; every stream and result series is declared here.

    Threading: after construction, ONE writer thread calls append_items,
    append_results, maybe_flush (at least every 0.2 s, also when idle) and close.
    Rows reach the disk at the next flush; `maybe_flush` flushes once `flush_interval`
    seconds have passed since the last flush, so with the default 0.5 s a killed
    process loses at most the last second. Raises RecordingError (path and cause) when
    the file cannot be created or written, or an item does not match its declaration.
    The file must not exist yet: a recording is never overwritten.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        streams: dict[str, SourceInfo],
        results: Sequence[ResultSpec] = (),
        config: dict | None = None,
        versions: dict | None = None,
        flush_interval: float = 0.5,
    ) -> None:
        self.path = os.fspath(path)
        self.flush_interval = flush_interval
        self._infos = dict(streams)
        self._specs = {(r.stream, r.engine): r for r in results}
        self._closed = False
        self._dirty = False
        self._last_flush = time.monotonic()
        self.counts: dict[str | tuple[str, str], int] = {}
        self._check_declarations(results)
        root_attrs = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "config": _to_json(config or {}, "config", self.path),
            "versions": _to_json(versions or {}, "versions", self.path),
        }
        stream_layouts = {
            name: _stream_layout(name, info, self.path) for name, info in self._infos.items()
        }
        result_layouts = {key: _result_layout(spec, self.path) for key, spec in self._specs.items()}
        self._reserve()
        try:
            self._file = h5py.File(
                self.path,
                "w",
                libver=_LIBVER,
                locking="best-effort",
                rdcc_nbytes=_CHUNK_CACHE_BYTES,
                rdcc_w0=1.0,  # evict chunks that are fully written first
            )
            self._file.attrs.update(root_attrs)
            self._streams = {
                name: _Series.create(self._file.create_group(f"streams/{name}"), *layout)
                for name, layout in stream_layouts.items()
            }
            self._results = {
                key: _Series.create(self._file.create_group(f"results/{key[0]}/{key[1]}"), *layout)
                for key, layout in result_layouts.items()
            }
            # From here on no object may be created: SWMR keeps the file readable.
            self._file.swmr_mode = True
            # HDF5 drops its own lock in SWMR mode; this one tells repair a writer is alive
            self._lock_fd = os.open(self.path, os.O_RDONLY)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except Exception as e:
            if hasattr(self, "_file"):
                self._file.close()
            if hasattr(self, "_lock_fd"):
                os.close(self._lock_fd)
            os.remove(self.path)
            self._closed = True
            raise RecordingError(f"cannot write recording {self.path}: {e}") from e
        self.counts.update({name: 0 for name in self._streams})
        self.counts.update({key: 0 for key in self._results})

    def _check_declarations(self, results: Sequence[ResultSpec]) -> None:
        for name, info in self._infos.items():
            _check_name(name, "stream", self.path)
            if info.kind not in _ITEM_DTYPE:
                raise RecordingError(
                    f"cannot write recording {self.path}: stream {name!r} has kind "
                    f"{info.kind!r}; expected 'frames' or 'samples'"
                )
            for key in info.truth_shapes:
                _check_name(key, f"truth key of stream {name!r}", self.path)
        for spec in results:
            _check_name(spec.stream, "result stream", self.path)
            _check_name(spec.engine, "engine", self.path)
        if len(self._specs) != len(results):
            raise RecordingError(
                f"cannot write recording {self.path}: a (stream, engine) result series "
                "is declared twice"
            )

    def _reserve(self) -> None:
        """Create the file exclusively, so an unwritable path or an existing file fails clearly."""
        try:
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except OSError as e:
            raise RecordingError(f"cannot write recording {self.path}: {e.strerror}") from e

    def _writable(self) -> None:
        if self._closed:
            raise RecordingError(f"recording {self.path} is closed")

    def _stack(self, arrays: Sequence[Any], shape: tuple[int, ...], dtype, what: str) -> np.ndarray:
        out = np.empty((len(arrays), *shape), dtype=dtype)
        for i, a in enumerate(arrays):
            a = np.asarray(a)
            if a.shape != tuple(shape):
                raise RecordingError(
                    f"recording {self.path}: {what}: row {i} has shape {a.shape}, "
                    f"declared {tuple(shape)}"
                )
            out[i] = a
        return out

    def append_items(self, stream: str, items: Sequence[Item]) -> None:
        """Append items of a declared stream, in order: one resize and one write per dataset."""
        self._writable()
        if stream not in self._streams:
            raise RecordingError(
                f"recording {self.path}: stream {stream!r} was not declared; "
                f"declared: {', '.join(self._streams) or 'none'}"
            )
        if not items:
            return
        info = self._infos[stream]
        kind = Frame if info.kind == "frames" else Sample
        bad = next((it for it in items if not isinstance(it, kind)), None)
        if bad is not None:
            raise RecordingError(
                f"recording {self.path}: stream {stream!r} records {info.kind}, "
                f"got a {type(bad).__name__}"
            )
        dtype = _ITEM_DTYPE[info.kind]
        values = [it.data if info.kind == "frames" else it.value for it in items]
        columns = {
            "t": np.array([it.t for it in items], dtype=np.float64),
            "index": np.array([it.index for it in items], dtype=np.int64),
            "t_host": np.array([it.t_host for it in items], dtype=np.float64),
            "data": self._stack(values, info.shape, dtype, f"stream {stream!r} data"),
        }
        for key, shape in info.truth_shapes.items():
            missing = next((it.index for it in items if key not in it.truth), None)
            if missing is not None:
                raise RecordingError(
                    f"recording {self.path}: stream {stream!r}: item {missing} has no truth {key!r}"
                )
            columns[f"truth/{key}"] = self._stack(
                [it.truth[key] for it in items], shape, dtype, f"stream {stream!r} truth {key!r}"
            )
        extra = {k for it in items for k in it.truth} - set(info.truth_shapes)
        if extra:
            raise RecordingError(
                f"recording {self.path}: stream {stream!r}: undeclared truth "
                f"{', '.join(sorted(extra))}"
            )
        self._write(self._streams[stream], columns, stream)
        self.counts[stream] = self._streams[stream].n

    def append_results(self, stream: str, engine: str, rows: Sequence[ResultRow]) -> None:
        """Append an engine's results on a stream, in order (a declared ResultSpec)."""
        self._writable()
        key = (stream, engine)
        if key not in self._results:
            declared = ", ".join(f"{s}/{e}" for s, e in self._results) or "none"
            raise RecordingError(
                f"recording {self.path}: results {stream}/{engine} were not declared; "
                f"declared: {declared}"
            )
        if not rows:
            return
        spec = self._specs[key]
        what = f"results {stream}/{engine}"
        columns = {
            "index": np.array([r.index for r in rows], dtype=np.int64),
            "t": np.array([r.t for r in rows], dtype=np.float64),
            "data": self._stack([r.data for r in rows], spec.shape, np.float32, f"{what} data"),
            "latency": np.array([r.latency for r in rows], dtype=np.float64),
            "t_host": self._stack([r.t_host for r in rows], (3,), np.float64, f"{what} t_host"),
        }
        has_cov = [r.cov is not None for r in rows]
        if spec.cov_shape is None and any(has_cov):
            raise RecordingError(f"recording {self.path}: {what}: cov given but not declared")
        if spec.cov_shape is not None:
            if not all(has_cov):
                raise RecordingError(f"recording {self.path}: {what}: a row has no cov")
            columns["cov"] = self._stack(
                [r.cov for r in rows], spec.cov_shape, np.float32, f"{what} cov"
            )
        if spec.info.get("task") == "tracking":
            columns["gated"] = np.array([r.gated for r in rows], dtype=np.uint8)
        self._write(self._results[key], columns, what)
        self.counts[key] = self._results[key].n

    def _write(self, series: _Series, columns: dict[str, np.ndarray], what: str) -> None:
        try:
            series.append(columns)
        except (OSError, RuntimeError) as e:
            raise RecordingError(f"cannot write recording {self.path}: {what}: {e}") from e
        self._dirty = True

    def maybe_flush(self) -> bool:
        """Flush when rows are pending and `flush_interval` has passed; True if it flushed."""
        self._writable()
        if not self._dirty or time.monotonic() - self._last_flush < self.flush_interval:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Put every appended row on disk and count it in `committed`."""
        self._writable()
        try:
            self._file.flush()  # rows first ...
            for series in (*self._streams.values(), *self._results.values()):
                series.commit()
            self._file.flush()  # ... then the counts that cover them
        except (OSError, RuntimeError) as e:
            raise RecordingError(f"cannot write recording {self.path}: flush: {e}") from e
        self._dirty = False
        self._last_flush = time.monotonic()

    def close(self) -> None:
        """Flush and close the file; safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
            self._file.close()
        except (OSError, RuntimeError) as e:
            raise RecordingError(f"cannot write recording {self.path}: close: {e}") from e
        finally:
            self._closed = True
            os.close(self._lock_fd)  # after the close, which cleared the open-for-write flags

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_hdf5(path: str) -> tuple[h5py.File, RepairReport | None]:
    """Open read-only, and the repair made first when there was one to make.

    A file still marked open for write is repaired when no other process has it open
    (its writer was killed: see the module docstring), else opened as a SWMR reader,
    which sees everything the writer flushed."""
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise FormatError(f"{path}: not an HDF5 file")
    f = _open_plain(path, "best-effort")
    if f is not None:
        return f, None
    try:
        report = repair_recording(path)
    except RecordingError as e:  # a live writer, a reader, a read-only file: read, change nothing
        log.debug("%s; reading it as a SWMR reader", e)
    else:
        f = _open_plain(path, "best-effort")
        if f is not None:
            log.warning("%s", report.summary())
            return f, report
    return _open_swmr(path, "best-effort"), None


def _open_plain(path: str, locking: bool | str) -> h5py.File | None:
    """The file opened read-only, or None when it is marked open for write."""
    try:
        return h5py.File(path, "r", locking=locking)
    except OSError as e:
        cause = str(e)
        if "already open for write" in cause:
            return None
        what = "truncated HDF5 file" if "truncated" in cause else "unreadable HDF5 file"
        raise FormatError(f"{path}: {what} ({cause})") from None


def _open_swmr(path: str, locking: bool | str) -> h5py.File:
    """The file opened as a SWMR reader (allowed while it is marked open for write)."""
    try:
        f = h5py.File(path, "r", swmr=True, locking=locking)
    except OSError as e:
        raise FormatError(f"{path}: unreadable HDF5 file ({e})") from None
    # A SWMR reader skips HDF5's own end-of-file check, so do it here.
    stored, actual = f.id.get_filesize(), os.path.getsize(path)
    if stored > actual:
        f.close()
        raise FormatError(f"{path}: truncated HDF5 file ({actual} bytes, header says {stored})")
    return f


@dataclass(frozen=True, slots=True)
class RepairReport:
    """What `repair_recording` did to a recording whose writer never closed it.

    kept: per series ("stream NAME", "results STREAM/ENGINE") the committed rows, all kept;
    dropped: rows past them that the writer appended after its last flush (not known to
    be on disk), removed.
    """

    path: str
    kept: dict[str, int]
    dropped: dict[str, int]

    def summary(self) -> str:
        kept = ", ".join(f"{n} in {k}" for k, n in self.kept.items()) or "no series"
        dropped = sum(self.dropped.values())
        return (f"{self.path}: repaired a recording its writer never closed (killed?): cleared "
                f"its open-for-write flags; kept every committed row ({kept}); dropped {dropped} "
                "uncommitted row(s)")


def repair_recording(path: str | os.PathLike) -> RepairReport | None:
    """Make a recording left by a killed writer a closed file that plain HDF5 readers open.

    What `h5clear -s` does (clears the superblock's open-for-write flags), and then every
    series is cut to its committed rows (so all datasets of a series have one length and
    `committed` equals it), keeping every committed item. None when the file is not
    marked open for write (nothing to do; the file is not touched). Raises FormatError
    when it is not a readable recording, RecordingError naming the file when another
    process has it open (a writer still recording, or a reader) or it cannot be written.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise FormatError(f"{path}: not an HDF5 file")
    with _exclusive_lock(path):
        f = _open_plain(path, False)
        if f is not None:
            f.close()
            return None
        with RecordingReader._over(path, _open_swmr(path, False)) as r:
            series = {f"stream {name}": (f"streams/{name}", s) for name, s in r._streams.items()}
            series.update({f"results {st}/{en}": (f"results/{st}/{en}", s)
                           for (st, en), s in r._results.items()})
            plan = {label: (group, s.n, {name: ds.shape[0] for name, ds in s.datasets.items()})
                    for label, (group, s) in series.items()}
        try:
            with h5py.File(_open_clearing_status_flags(path)) as f:
                for group, n, lengths in plan.values():
                    for name, length in lengths.items():
                        if length != n:
                            f[group][name].resize(n, axis=0)
                    f[group]["committed"][()] = n
        except (OSError, RuntimeError, ValueError) as e:
            raise RecordingError(f"cannot repair recording {path}: {e}") from None
    return RepairReport(path, {k: n for k, (_, n, _) in plan.items()},
                        {k: max(lengths.values()) - n for k, (_, n, lengths) in plan.items()})


@contextmanager
def _exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive flock on `path`; RecordingError when another process has it open
    (a writer's or an HDF5 reader's shared lock) or locks do not work on its file system."""
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecordingError(f"cannot repair recording {path}: another process has it open "
                                 "(a writer still recording, or a reader)") from None
        except OSError as e:
            raise RecordingError(f"cannot repair recording {path}: cannot lock it ({e.strerror}), "
                                 "so cannot tell whether a writer still has it open") from None
        yield
    finally:
        os.close(fd)


def _open_clearing_status_flags(path: str) -> h5py.h5f.FileID:
    """Open read-write with HDF5's "clear_status_flags" file-access property: the open that
    `h5clear -s` makes, after which closing the file leaves its status flags cleared.

    h5py does not expose that property, so it is set with H5Pset from the libhdf5 that h5py
    itself links (found through h5py's extension module), under h5py's global lock. The
    caller holds the exclusive flock, so HDF5's own locking is off."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_file_locking(False, True)
    try:
        h5pset = ctypes.CDLL(h5py.h5p.__file__).H5Pset
    except (OSError, AttributeError) as e:
        raise RecordingError(f"cannot repair recording {path}: HDF5's H5Pset is not reachable "
                             f"({e}); run `h5clear -s {path}`") from None
    h5pset.argtypes = (ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p)
    h5pset.restype = ctypes.c_int
    true = (ctypes.c_uint8 * 8)(*[1] * 8)  # a true hbool_t whether it is 1 byte or 4
    with h5py._objects.phil:
        status = h5pset(fapl.id, b"clear_status_flags", true)
    if status < 0:
        raise RecordingError(f"cannot repair recording {path}: this HDF5 has no clear_status_flags "
                             f"property; run `h5clear -s {path}`")
    return h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl)


def _attr_json(group: h5py.Group, name: str, where: str) -> Any:
    raw = _attr(group, name, where)
    try:
        return json.loads(raw)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{where}: attribute {name!r} is not valid JSON ({e})") from None


def _attr(group: h5py.Group, name: str, where: str) -> Any:
    if name not in group.attrs:
        raise FormatError(f"{where}: missing attribute {name!r}")
    return group.attrs[name]


def _open_series(group: h5py.Group, rows: dict[str, tuple[int, ...]], where: str) -> _Series:
    """The datasets `rows` names (name -> shape of one row), checked to exist and fit."""
    datasets = {}
    for name, row in {**rows, "committed": None}.items():
        ds = group.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise FormatError(f"{where}: missing dataset {name!r}")
        if row is not None and ds.shape[1:] != row:
            raise FormatError(
                f"{where}: dataset {name!r} has rows of shape {ds.shape[1:]}, expected {row}"
            )
        datasets[name] = ds
    del datasets["committed"]
    return _Series(group, datasets)


def _columns(series: _Series, n: int, fields: Sequence[str] | None, where: str) -> dict:
    names = list(series.datasets) if fields is None else list(fields)
    missing = [f for f in names if f not in series.datasets]
    if missing:
        raise FormatError(f"{where}: no column(s) {', '.join(missing)}")
    return {name: series.datasets[name][:n] for name in names}


class RecordingReader:
    """Reads a recording, also one still being written or left by a killed writer.

    Raises FormatError naming the file and the problem when it is missing, not HDF5,
    truncated, foreign (no `format` attribute), of an unsupported format_version, or
    lacks datasets or attributes, or (for a closed file) its lengths disagree.
    A file a killed writer left is repaired first (`repair_recording`; `repaired` is then
    its RepairReport, else None). `unfinished` is True when the writer has not closed the
    file (still writing, or killed and the file could not be repaired): the reader then
    gives the rows the writer committed, and `n_items`, `arrays` and `result_arrays` pick
    up rows flushed since. Not thread-safe: use one reader per thread.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = os.fspath(path)
        file, self.repaired = _open_hdf5(path)
        self._start(path, file)

    @classmethod
    def _over(cls, path: str, file: h5py.File) -> RecordingReader:
        """A reader of a file already open (repair reads one under its own lock)."""
        reader = cls.__new__(cls)
        reader.repaired = None
        reader._start(path, file)
        return reader

    def _start(self, path: str, file: h5py.File) -> None:
        self.path, self._file = path, file
        try:
            self._load()
        except BaseException:
            self._file.close()
            raise

    def _load(self) -> None:
        f, where = self._file, self.path
        intent = f.id.get_intent()
        self._swmr_read = bool(intent & h5py.h5f.ACC_SWMR_READ)
        # ACC_SWMR_WRITE: the writer is this process, sharing its open file.
        self.unfinished = self._swmr_read or bool(intent & h5py.h5f.ACC_SWMR_WRITE)
        if "format" not in f.attrs:
            raise FormatError(f"{where}: not an MBDL Studio recording (no 'format' attribute)")
        if f.attrs["format"] != FORMAT:
            raise FormatError(
                f"{where}: not an MBDL Studio recording (format {f.attrs['format']!r})"
            )
        self.format_version = int(_attr(f, "format_version", where))
        if self.format_version != FORMAT_VERSION:
            raise FormatError(
                f"{where}: format_version {self.format_version} is not supported "
                f"(this reader reads {FORMAT_VERSION})"
            )
        self.created = str(_attr(f, "created", where))
        self.config: dict = _attr_json(f, "config", where)
        self.versions: dict = _attr_json(f, "versions", where)

        self._infos: dict[str, SourceInfo] = {}
        self._streams: dict[str, _Series] = {}
        for name, group in f.get("streams", {}).items():
            here = f"{where}: stream {name!r}"
            kind = str(_attr(group, "kind", here))
            if kind not in _ITEM_DTYPE:
                raise FormatError(f"{here}: unknown kind {kind!r}")
            truth_shapes = {k: tuple(s) for k, s in _attr_json(group, "truth_shapes", here).items()}
            info = SourceInfo(
                uri=str(_attr(group, "uri", here)),
                kind=kind,
                shape=tuple(int(x) for x in _attr(group, "shape", here)),
                rate_hz=float(_attr(group, "rate_hz", here)),
                meta=_attr_json(group, "meta", here),
                truth_shapes=truth_shapes,
            )
            rows = {"t": (), "index": (), "t_host": (), "data": info.shape}
            rows.update({f"truth/{k}": s for k, s in truth_shapes.items()})
            self._infos[name] = info
            self._streams[name] = _open_series(group, rows, here)
        self.streams: list[str] = list(self._streams)

        self._result_infos: dict[tuple[str, str], dict] = {}
        self._results: dict[tuple[str, str], _Series] = {}
        for stream, engines in f.get("results", {}).items():
            for engine, group in engines.items():
                here = f"{where}: results {stream}/{engine}"
                shape = tuple(int(x) for x in _attr(group, "shape", here))
                cov_shape = _attr_json(group, "cov_shape", here)
                rows = {"index": (), "t": (), "data": shape, "latency": (), "t_host": (3,)}
                if cov_shape is not None:
                    rows["cov"] = tuple(cov_shape)
                if "gated" in group:  # tracker results recorded since the column exists
                    rows["gated"] = ()
                self._result_infos[(stream, engine)] = _attr_json(group, "info", here)
                self._results[(stream, engine)] = _open_series(group, rows, here)
        self.results: list[tuple[str, str]] = list(self._results)

        for name, series in self._streams.items():
            series.n = series.readable_rows(not self.unfinished, f"{where}: stream {name!r}")
        for (stream, engine), series in self._results.items():
            here = f"{where}: results {stream}/{engine}"
            series.n = series.readable_rows(not self.unfinished, here)

    def _stream(self, stream: str) -> _Series:
        if stream not in self._streams:
            raise FormatError(
                f"{self.path}: no stream {stream!r}; streams: {', '.join(self.streams) or 'none'}"
            )
        return self._streams[stream]

    def _update(self, series: _Series, where: str) -> int:
        """Rows readable now: a SWMR reader looks again at what the writer flushed."""
        if self._swmr_read:
            series.refresh()
        if self.unfinished:
            series.n = series.readable_rows(False, where)
        return series.n

    def info(self, stream: str) -> SourceInfo:
        self._stream(stream)
        return self._infos[stream]

    def n_items(self, stream: str) -> int:
        return self._update(self._stream(stream), f"{self.path}: stream {stream!r}")

    def item(self, stream: str, i: int) -> Item:
        """Item i (0-based) of `stream` with its recorded index, t, t_host and truth."""
        series = self._stream(stream)
        if not 0 <= i < series.n and not 0 <= i < self.n_items(stream):
            raise IndexError(f"{self.path}: stream {stream!r} has {series.n} items, no item {i}")
        ds = series.datasets
        truth = {
            name.removeprefix("truth/"): d[i] for name, d in ds.items() if name.startswith("truth/")
        }
        index, t, t_host = int(ds["index"][i]), float(ds["t"][i]), float(ds["t_host"][i])
        if self._infos[stream].kind == "frames":
            return Frame(index=index, t=t, data=ds["data"][i], truth=truth, t_host=t_host)
        return Sample(index=index, t=t, value=ds["data"][i], truth=truth, t_host=t_host)

    def arrays(self, stream: str, fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Every readable row of `stream`: t, index, t_host, data, truth/<key> (or only
        `fields`, so that reading the timeline of a GB recording does not load its frames)."""
        series = self._stream(stream)
        n = self._update(series, f"{self.path}: stream {stream!r}")
        return _columns(series, n, fields, f"{self.path}: stream {stream!r}")

    def _result(self, stream: str, engine: str) -> _Series:
        if (stream, engine) not in self._results:
            listed = ", ".join(f"{s}/{e}" for s, e in self.results) or "none"
            raise FormatError(f"{self.path}: no results {stream}/{engine}; results: {listed}")
        return self._results[(stream, engine)]

    def result_info(self, stream: str, engine: str) -> dict:
        """The engine info recorded with the results (ResultSpec.info)."""
        self._result(stream, engine)
        return self._result_infos[(stream, engine)]

    def result_arrays(
        self, stream: str, engine: str, fields: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Every readable result row: index, t, data, latency, t_host and cov if recorded
        (or only `fields`)."""
        series = self._result(stream, engine)
        n = self._update(series, f"{self.path}: results {stream}/{engine}")
        return _columns(series, n, fields, f"{self.path}: results {stream}/{engine}")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def list_streams(path: str | os.PathLike) -> list[str]:
    """The stream names of a recording; FormatError if it is not one."""
    with RecordingReader(path) as reader:
        return reader.streams


class ReplaySource(SourceBase):
    """Replays one stream of a recording as a Source, with its recorded index, t and truth.

    Paces items by their recorded `t` scaled by `speed` (0: as fast as possible,
    2: twice real time), with absolute deadlines so replay does not drift. At the end
    it raises SourceEnded, or with `loop` starts again: index and t then keep
    increasing (by one recording's span per lap) so the stream looks continuous.
    `info` is the recorded SourceInfo under this source's URI, its meta gaining
    "recorded_uri". `t_host` is stamped when the item is read, like a live source.

    Playback controls (`pause`, `resume`, `step`, `seek`, `set_speed`, `position`) may
    be called from any thread (the GUI's) while the acquisition thread reads.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        stream: str | None = None,
        speed: float = 1.0,
        loop: bool = False,
        uri: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.uri = uri or f"replay:{self.path}"
        check_pacing(self.uri, speed)
        self.stream = stream
        self.speed = speed
        self.loop = loop
        self._reader: RecordingReader | None = None
        self._lock = threading.Lock()
        self._paused = False
        self._steps = 0  # items to release while paused
        self._t_anchor = 0.0  # recorded time (lap-adjusted) that plays at _t0_host

    def open(self) -> None:
        if self._reader is not None:
            return
        try:
            reader = RecordingReader(self.path)
        except FormatError as e:
            raise SourceError(f"{self.uri}: {e}") from e
        try:
            self.stream = self._pick_stream(reader.streams)
            recorded = reader.info(self.stream)
            self._n = reader.n_items(self.stream)
            columns = reader._streams[self.stream].datasets
            self._t = columns["t"][: self._n]
            self._index = columns["index"][: self._n]
        except BaseException:
            reader.close()
            raise
        self._reader = reader
        self._info = SourceInfo(
            uri=self.uri,
            kind=recorded.kind,
            shape=recorded.shape,
            rate_hz=recorded.rate_hz,
            meta={**recorded.meta, "recorded_uri": recorded.uri},
            truth_shapes=recorded.truth_shapes,
        )
        self._k = 0  # next item within the lap
        self._lap = 0
        self._t0_host: float | None = None
        if self._n:
            dt = 1.0 / recorded.rate_hz if recorded.rate_hz > 0 else 0.0
            if dt == 0.0 and self._n > 1:
                dt = float(np.median(np.diff(self._t)))
            self._lap_t = float(self._t[-1] - self._t[0]) + dt
            self._lap_index = int(self._index[-1] - self._index[0]) + 1

    def _pick_stream(self, streams: list[str]) -> str:
        listed = ", ".join(streams) or "none"
        if self.stream is None:
            if len(streams) != 1:
                raise SourceError(
                    f"{self.uri}: the recording holds {len(streams)} streams ({listed}); "
                    "choose one with ?stream=NAME"
                )
            return streams[0]
        if self.stream not in streams:
            raise SourceError(f"{self.uri}: no stream {self.stream!r}; streams: {listed}")
        return self.stream

    # ---- playback controls (any thread) ----------------------------------------------
    def pause(self) -> None:
        with self._lock:
            self._paused = True

    def resume(self) -> None:
        with self._lock:
            self._paused, self._steps, self._t0_host = False, 0, None

    def step(self, n: int = 1) -> None:
        """While paused, release the next `n` items at once."""
        with self._lock:
            self._steps += max(int(n), 0)

    def seek(self, k: int) -> None:
        """Continue from item k of the recording (clipped to the recording)."""
        with self._lock:
            self._k = min(max(int(k), 0), max(self._n - 1, 0))
            self._t0_host = None

    def set_speed(self, speed: float) -> None:
        check_pacing(self.uri, speed)
        with self._lock:
            self.speed, self._t0_host = speed, None

    @property
    def paused(self) -> bool:
        return self._paused

    def position(self) -> tuple[int, int]:
        """(next item, items in the recording)."""
        return self._k, self._n

    def read(self, timeout: float = 0.1) -> Item | None:
        """The next item when due, None if not due within `timeout` (or paused);
        SourceEnded at the end."""
        if self._reader is None:
            raise SourceError(f"{self.uri}: source is not open")
        with self._lock:
            wait = 0.0
            if self._paused and self._steps == 0:
                wait = max(timeout, 1e-3)  # nothing to deliver until resume() or step()
            else:
                if self._k == self._n:
                    if not self.loop or self._n == 0:
                        raise SourceEnded(f"{self.uri}: end of recording ({self._n} items)")
                    self._k = 0
                    self._lap += 1
                t = float(self._t[self._k]) + self._lap * self._lap_t
                if self.speed > 0 and not self._paused:
                    now = time.monotonic()
                    if self._t0_host is None:  # (re)anchor after open, resume, seek, speed
                        self._t0_host, self._t_anchor = now, t
                    wait = self._t0_host + (t - self._t_anchor) / self.speed - now
        if wait > 0 and wait >= timeout:
            time.sleep(max(timeout, 0.0))
            return None
        if wait > 0:
            time.sleep(wait)  # outside the lock: the GUI's controls never wait on playback
        with self._lock:
            k = self._k
            if (self._paused and self._steps == 0) or k == self._n:
                return None  # paused or sought while sleeping: the next read decides
            try:
                item = self._reader.item(self.stream, k)
            except (OSError, RuntimeError) as e:
                raise SourceError(f"{self.uri}: cannot read item {k}: {e}") from e
            item.index += self._lap * self._lap_index
            item.t = float(self._t[k]) + self._lap * self._lap_t
            item.t_host = time.monotonic()
            self._k = k + 1
            if self._paused:
                self._steps -= 1
            return item

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None


def source_from_uri(parsed: ParsedURI) -> ReplaySource:
    """replay:FILE.h5?stream=NAME&speed=1&loop=0 (stream optional for a one-stream file)."""
    parsed.check_known({"stream", "speed", "loop"})
    if not parsed.target:
        raise SourceError(f"{parsed.uri}: no file given (expected replay:FILE.h5)")
    return ReplaySource(
        parsed.target,
        stream=parsed.get("stream", None),
        speed=parsed.get("speed", 1.0, float),
        loop=parsed.get("loop", False, bool),
        uri=parsed.uri,
    )
