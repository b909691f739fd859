"""The lossless recorder: every item and every result goes to HDF5 on its own thread.

Producers (acquisition threads, engine workers) only enqueue; the writer thread
drains the queue in batches (one resize + one slab write per stream per batch) and
flushes at least twice a second, so a killed process loses under a second of data.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import defaultdict
from pathlib import Path

from drivers.base import Frame, Sample, SourceInfo
from drivers.recording import RecordingWriter, ResultRow, ResultSpec
from mbdl_app.session.bus import Result

log = logging.getLogger(__name__)

_BATCH = 1024  # entries per drain; bounds the time between flush checks
# h5py holds the GIL while it writes: waking up for every item (1000/s for a 500 Hz
# tracker) starves the engine threads (EKF step p50 0.4 -> 1.6 ms measured). Lingering
# a little after the first item turns those into ~20 batched writes per second.
LINGER_S = 0.05


class Recorder(threading.Thread):
    """Owns the RecordingWriter; `put_item` / `put_result` are safe from any thread."""

    def __init__(self, path: str | Path, streams: dict[str, SourceInfo],
                 results: list[ResultSpec], config: dict, versions: dict) -> None:
        super().__init__(name="recorder", daemon=True)
        self.path = Path(path)
        self.writer = RecordingWriter(self.path, streams, results, config=config,
                                      versions=versions, flush_interval=0.5)
        self._q: queue.Queue = queue.Queue()
        self._halt = threading.Event()
        self.max_backlog = 0
        self.state = "running"
        self.error = ""

    def put_item(self, stream: str, item: Frame | Sample) -> None:
        self._q.put(("item", stream, None, item))

    def put_result(self, r: Result) -> None:
        row = ResultRow(index=r.index, t=r.t, data=r.data, latency=r.compute_latency,
                        t_host=(r.t_acquired, r.t_start, r.t_end), cov=r.cov, gated=r.gated)
        self._q.put(("result", r.stream, r.engine, row))

    @property
    def backlog(self) -> int:
        return self._q.qsize()

    def _drain(self, first) -> None:
        batch = [first]
        while len(batch) < _BATCH:
            try:
                batch.append(self._q.get_nowait())
            except queue.Empty:
                break
        self.max_backlog = max(self.max_backlog, len(batch) + self._q.qsize())
        items: dict[str, list] = defaultdict(list)
        rows: dict[tuple[str, str], list] = defaultdict(list)
        for kind, stream, engine, payload in batch:
            if kind == "item":
                items[stream].append(payload)
            else:
                rows[(stream, engine)].append(payload)
        for stream, its in items.items():
            self.writer.append_items(stream, its)
        for (stream, engine), rs in rows.items():
            self.writer.append_results(stream, engine, rs)

    def run(self) -> None:
        try:
            while True:
                try:
                    first = self._q.get(timeout=0.2)
                except queue.Empty:
                    if self._halt.is_set():
                        break
                    self.writer.maybe_flush()
                    continue
                if not self._halt.is_set():
                    self._halt.wait(LINGER_S)
                self._drain(first)
                self.writer.maybe_flush()
        except Exception as e:
            self.state, self.error = "failed", f"recording {self.path}: {type(e).__name__}: {e}"
            log.error("%s", self.error)
        finally:
            try:
                self.writer.close()
            except Exception as e:  # the file is still flushed up to the last second
                log.error("recording %s: close failed: %s", self.path, e)
        if self.state == "running":
            self.state = "closed"

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything queued, then close the file."""
        self._halt.set()
        self.join(timeout)

    def counts(self) -> dict[str, int]:
        """Rows written: "stream" for items, "stream/engine" for results."""
        return {k if isinstance(k, str) else "/".join(k): v for k, v in self.writer.counts.items()}
