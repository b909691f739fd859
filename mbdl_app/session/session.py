"""The live session of ARCHITECTURE.md: sources -> engines -> bus, plus the recorder.

    session = Session(default_config(), record="out.h5")
    session.start()            # opens sources, builds + warms engines, starts threads
    session.status()           # a snapshot: per-source and per-engine stats
    session.stop()             # stops acquisition, then engines, then drains the recorder

Threads: one acquisition thread per source, one worker per engine, one recorder.
Nothing here imports Qt: the GUI polls `bus` and `status()` on a timer.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

import numpy as np
import psutil

import engines
from drivers import SourceInfo, open_source, parse_uri
from drivers.base import Frame
from drivers.errors import DriverError
from drivers.recording import ResultSpec
from engines.errors import TorchMissing
from engines.load import accepted_params
from engines.runtime.onnxruntime_runtime import set_default_intra_op_threads as ort_default_threads
from engines.runtime.threads import set_intra_op_threads_if_loaded
from mbdl_app import __version__
from mbdl_app.catalog import engine_kind
from mbdl_app.config import EngineConfig, SessionConfig
from mbdl_app.errors import SessionError
from mbdl_app.session.bus import EngineStats, Result, ResultBus
from mbdl_app.session.maps import MAP_TASK, MapSink
from mbdl_app.session.recorder import Recorder
from mbdl_app.session.rings import FrameRing, SampleQueue
from mbdl_app.session.stage_control import control_loop
from mbdl_app.session.vectors import live_engine
from mbdl_app.session.workers import (
    AcquisitionThread,
    EngineWorker,
    ImagingWorker,
    SourceStats,
    TrackerWorker,
)

log = logging.getLogger(__name__)


def with_param(uri: str, key: str, value) -> str:
    """`uri` with parameter `key` set to `value` (replacing any earlier value)."""
    p = parse_uri(uri)
    params = {**p.params, key: str(value)}
    return f"{p.scheme}:{p.target}?{urlencode(params)}"


def is_tracker(engine) -> bool:
    return engine_kind(engine) == "samples"


def frame_of_result(r: Result) -> Frame:
    """An imaging result as the frame a chained engine reads: its newest output frame, with the
    input's index, time and truth, and its acquisition time (so the chain's latency is end to end)."""
    return Frame(r.index, r.t, r.data[-1], r.truth, t_host=r.t_acquired)


def fan_out(sinks: list):
    """One callback calling each of `sinks` in order (a worker has one on_result)."""
    if len(sinks) == 1:
        return sinks[0]

    def call(r: Result) -> None:
        for sink in sinks:
            sink(r)

    return call


@dataclass
class SessionStatus:
    elapsed_s: float
    sources: dict[str, dict]
    engines: dict[str, dict]
    recorder: dict | None
    rss_mb: float
    running: bool

    def to_json(self) -> str:
        return json.dumps(self.__dict__, default=float, indent=2)


@dataclass
class _Stream:
    name: str
    info: SourceInfo
    source: object
    stats: SourceStats
    speed: float
    consumers: list = field(default_factory=list)


class Session:
    """One live run. Build with a SessionConfig; `start()`, poll `status()`, `stop()`."""

    SAMPLE_HISTORY = 2000  # recent samples kept per stream for track views

    def __init__(self, config: SessionConfig, record: str | Path | None = None,
                 intra_op_threads: int = 1) -> None:
        """`intra_op_threads`: torch threads per call (0 = leave torch's default), and the intra-op
        threads of the ONNX Runtime sessions its engines open (0 = ONNX Runtime's default of 1 here);
        one suits a live session, whose parallelism is one thread per engine; a single heavy engine
        (the sliding-window CORONA, issue 15) may take 2."""
        self.config = config
        self.intra_op_threads = intra_op_threads
        self.record_path = Path(record) if record else (
            Path(config.record.path) if config.record.path else None)
        self.bus = ResultBus()
        self.streams: dict[str, _Stream] = {}
        self.engines: dict[str, object] = {}
        self.bindings: dict[str, str] = {}  # engine label -> source name (a chained engine: its input's)
        self._frame_shapes: dict[str, tuple] = {}  # engine label -> shape of the frames it reads
        self.hops: dict[str, int] = {}  # imaging engine label -> new frames per call
        self.lags: dict[str, int] = {}  # imaging engine label -> frames published before the newest
        self.maps: dict[str, MapSink] = {}  # super-resolution engine label -> its live map
        self.recorder: Recorder | None = None
        self._last_recording: Recorder | None = None  # for the final status after stop
        self._rec_lock = threading.Lock()
        self._specs: list[ResultSpec] = []
        self._artifacts: dict[str, str] = {}
        self._workers: list[EngineWorker] = []
        self._acq: list[AcquisitionThread] = []
        self._rings: list[FrameRing | SampleQueue] = []
        self._recent: dict[str, deque] = {}  # newest items per stream, for views
        self._truth_images: dict[str, np.ndarray | None] = {}
        self._stop = threading.Event()
        self._t_start = float("nan")
        self._t_stop: float | None = None
        self._started = False
        self._stopped = False
        self.skipped: dict[str, str] = {}  # engine label -> why it does not run (needs torch)
        self.control = None  # the StageControlLoop of a [control] section, once started
        self._add_lock = threading.Lock()  # add_engine from any thread

    # ---- building -------------------------------------------------------------------
    def _open_sources(self) -> None:
        for sc in self.config.sources:
            src = open_source(sc.uri)
            src.open()
            info = src.info
            speed = float(parse_uri(sc.uri).params.get("speed", 1.0))
            self.streams[sc.name] = _Stream(
                sc.name, info, src, SourceStats(sc.name, sc.uri, info.rate_hz), speed)

    def _resolve_source(self, ec: EngineConfig, engine) -> str:
        """The source an engine reads: as configured, else the first of the right kind."""
        want = engine_kind(engine)
        if ec.source is not None:
            info = self.streams[ec.source].info
            if info.kind != want:
                raise SessionError(
                    f"engine {ec.label!r} ({ec.name}) needs a {want} source, but {ec.source!r} "
                    f"({info.uri}) gives {info.kind}")
            return ec.source
        for name, s in self.streams.items():
            if s.info.kind == want:
                return name
        raise SessionError(f"engine {ec.label!r} ({ec.name}) needs a {want} source; "
                           f"none of {', '.join(self.streams)} gives {want}")

    def _resolve_input(self, ec: EngineConfig, engine) -> str:
        """A chained engine's source: its input engine's, when both are imaging engines."""
        upstream = self.engines[ec.input]
        for label, e in ((ec.input, upstream), (ec.label, engine)):
            if engine_kind(e) != "frames":
                raise SessionError(f"engine {ec.label!r} reads engine {ec.input!r}: only imaging engines "
                                   f"chain, and {label!r} is not one")
        return self.bindings[ec.input]

    def _build_engine(self, ec: EngineConfig):
        """Build an engine; a source's meta["model"] fills the physics parameters not set."""
        params = dict(ec.params)
        engine = live_engine(engines.load(ec.name, backend=ec.backend, **params))
        source = self._resolve_input(ec, engine) if ec.input else self._resolve_source(ec, engine)
        model = self.streams[source].info.meta.get("model", {})
        extra = {k: model[k] for k in accepted_params(ec.name) & set(model) if k not in params}
        if extra:  # a model-based engine takes the physics from the source it reads
            engine = live_engine(engines.load(ec.name, backend=ec.backend, **params, **extra))
        return engine, source

    def _warm_up(self, label: str, engine, item_shape: tuple) -> tuple[tuple, tuple | None]:
        """One call on zeros of the items it reads: the concrete output shape, the first-call time."""
        t0 = time.monotonic()
        if is_tracker(engine):
            engine.reset(1)
            est = engine.step(np.zeros((1, *item_shape)))
            engine.reset(1)
            shape, cov = est.mean.shape[1:], None if est.cov is None else est.cov.shape[1:]
        else:
            out = engine(np.zeros((1, engine.info.window, *item_shape), np.float32))
            shape, cov = out.shape[1:], None
        self.bus.set_first_call(label, time.monotonic() - t0)
        return tuple(shape), (tuple(cov) if cov is not None else None)

    @staticmethod
    def _hop(ec: EngineConfig, window: int, frames_out: int) -> int:
        """New frames per call: the config's `hop`, by default the window (consecutive blocks).

        An engine with one output per window (a stack-level estimate: SPARCOM's image of a
        stack of blinking frames) may hop up to its window; it gives one result per call."""
        most = window if frames_out == 1 else min(window, frames_out)
        hop = ec.hop or most
        if hop > most:
            raise SessionError(f"engine {ec.label!r}: hop {hop} exceeds its window of {window} frames"
                               + (f" ({frames_out} output frames per call)" if frames_out < window else ""))
        return hop

    @staticmethod
    def _lag(ec: EngineConfig, window: int, frames_out: int, hop: int) -> int:
        """The config's `lag`, checked: 0 .. window - hop, and only for an engine with an output
        frame per input frame."""
        if ec.lag and frames_out != window:
            raise SessionError(f"engine {ec.label!r}: lag {ec.lag} needs an output frame per input frame "
                               f"({frames_out} output frames per window of {window})")
        if ec.lag > window - hop:
            raise SessionError(f"engine {ec.label!r}: lag {ec.lag} exceeds window - hop = {window - hop}")
        return ec.lag

    def start(self) -> None:
        """Open every source, build and warm every engine, start all threads.

        Raises DriverError / EngineError / SessionError (one line, naming the input)
        and leaves nothing open if the configuration cannot run.
        """
        if self._started:
            raise SessionError("session already started")
        self._started = True
        set_intra_op_threads_if_loaded(self.intra_op_threads)
        ort_threads = ort_default_threads(self.intra_op_threads) if self.intra_op_threads > 0 else None
        try:
            self._open_sources()
            specs, artifacts = [], {}
            for ec in self.config.engines:
                try:
                    if ec.input in self.skipped:
                        raise TorchMissing(f"it reads engine {ec.input!r}, which needs torch")
                    engine, source = self._build_engine(ec)
                    set_intra_op_threads_if_loaded(self.intra_op_threads)  # a torch engine was built
                except TorchMissing as e:  # the runtime install: the rest of the session runs
                    log.warning("engine %r skipped: %s", ec.label, e)
                    self.skipped = {**self.skipped, ec.label: str(e)}
                    continue
                info = engine.info
                self.bindings[ec.label] = source
                # trackers keep a trajectory for the views; imaging results are large
                history = 1000 if is_tracker(engine) else 4
                self.bus.register(EngineStats(ec.label, source, info.family, info.task,
                                              info.backend), history)
                # a chained engine reads its input's newest output frame (T_out, C, H, W)[-1]
                item_shape = (self._frame_shapes[ec.input] if ec.input
                              else tuple(self.streams[source].info.shape))
                try:
                    shape, cov = self._warm_up(ec.label, engine, item_shape)
                except Exception as e:
                    raise SessionError(f"engine {ec.label!r} failed its warm-up call on "
                                       f"{ec.input or source!r}: {type(e).__name__}: {e}") from e
                self._frame_shapes[ec.label] = tuple(shape[1:])
                if not is_tracker(engine):
                    self.hops[ec.label] = self._hop(ec, info.window, shape[0])
                    self.lags[ec.label] = self._lag(ec, info.window, shape[0], self.hops[ec.label])
                    # two bursts and some: a view can play a block's frames at the source's rate
                    self.bus.keep(ec.label, max(history, 2 * self.hops[ec.label] + 4))
                    shape = (1, *shape[1:])  # one result per new frame (ImagingWorker)
                self.engines[ec.label] = engine
                sha = getattr(engine, "artifact_sha256", None)
                if sha:
                    artifacts[ec.label] = sha
                specs.append(ResultSpec(source, ec.label, shape, cov, info={
                    "name": info.name, "family": info.family, "task": info.task,
                    "backend": info.backend, "window": info.window,
                    "params": ec.params, "n_params": info.n_params, "shape": list(shape),
                    **({"hop": self.hops[ec.label]} if ec.label in self.hops else {}),
                    **({"lag": ec.lag} if ec.lag else {}),
                    **({"input": ec.input} if ec.input else {})}))
                if info.task == MAP_TASK:
                    self.maps[ec.label] = MapSink(ec.label, source, info.family, tuple(shape[-2:]), self.bus,
                                                   self._record_result)
                    specs.append(ResultSpec(source, self.maps[ec.label].label, tuple(shape), None, info={
                        "name": info.name, "task": f"{MAP_TASK}-map", "of": ec.label,
                        "meaning": "the sum of the engine's super-resolved images so far",
                        "shape": list(shape)}))
            self._specs, self._artifacts = specs, artifacts
            if self.skipped:
                self.config = self.config.model_copy(update={
                    "engines": [ec for ec in self.config.engines if ec.label not in self.skipped]})
            self._wire()
            if self.record_path is not None:
                self.start_recording(self.record_path)
        except BaseException:
            self._close_sources()
            raise
        finally:
            if ort_threads is not None:
                ort_default_threads(ort_threads)
        self._t_start = time.monotonic()
        for w in self._workers:
            w.start()
        for a in self._acq:
            a.start()

    def resolved_config(self) -> SessionConfig:
        """The config with every engine's source filled in (what a recording stores)."""
        engines_ = [ec if ec.input else ec.model_copy(update={"source": self.bindings.get(ec.label,
                                                                                          ec.source)})
                    for ec in self.config.engines]
        return self.config.model_copy(update={"engines": engines_})

    def add_engine(self, ec: EngineConfig) -> str:
        """Build `ec`'s engine and run it beside the others in this running session, without a
        restart (the sources, the other engines and a recording in progress go on); returns its
        label. Safe from any thread.

        The engine reads its source (`ec.source`, else the first of its kind) from the next frame
        or sample on. A recording in progress declared its engines when it began, so it does not
        hold this engine's results; the next file does (`rotate_recording`, `start_recording`:
        Studio.add_engine rotates at once). Raises SessionError when the session is not running,
        the label is taken, or `ec` chains another engine or makes a super-resolution map (those
        are set up at start), EngineError when the engine cannot be built or warmed up.
        """
        with self._add_lock:
            if not self._started or self._stopped:
                raise SessionError(f"cannot add engine {ec.label!r}: the session is not running")
            if ec.label in self.engines:
                raise SessionError(f"cannot add engine {ec.label!r}: the session already has one of that "
                                   "name (give it another id)")
            if ec.input:
                raise SessionError(f"cannot add engine {ec.label!r} reading engine {ec.input!r} to a running "
                                   "session; add it to the config and restart")
            if ec.source is not None and ec.source not in self.streams:
                raise SessionError(f"cannot add engine {ec.label!r}: no source {ec.source!r} "
                                   f"(sources: {', '.join(self.streams)})")
            engine, source = self._build_engine(ec)
            info = engine.info
            if info.task == MAP_TASK:
                raise SessionError(f"cannot add {info.task} engine {ec.label!r} to a running session "
                                   "(its map is set up at start); add it to the config and restart")
            history = 1000 if is_tracker(engine) else 4
            self.bus.register(EngineStats(ec.label, source, info.family, info.task, info.backend), history)
            item_shape = tuple(self.streams[source].info.shape)
            try:
                shape, cov = self._warm_up(ec.label, engine, item_shape)
            except Exception as e:
                raise SessionError(f"engine {ec.label!r} failed its warm-up call on {source!r}: "
                                   f"{type(e).__name__}: {e}") from e
            unknown_to = self.recorder  # its file was declared without this engine

            def record(r, skip=unknown_to) -> None:
                with self._rec_lock:
                    if self.recorder is not None and self.recorder is not skip:
                        self.recorder.put_result(r)

            if is_tracker(engine):
                ring = SampleQueue()
                worker = TrackerWorker(ec.label, source, engine, self.bus, self._stop, record, queue=ring)
            else:
                hop = self._hop(ec, info.window, shape[0])
                lag = self._lag(ec, info.window, shape[0], hop)
                self.bus.keep(ec.label, max(history, 2 * hop + 4))
                shape = (1, *shape[1:])
                ring = FrameRing(info.window, item_shape, hop)
                worker = ImagingWorker(ec.label, source, engine, self.bus, self._stop, record, ring=ring,
                                       lag=lag)
            self._specs.append(ResultSpec(source, ec.label, shape, cov, info={
                "name": info.name, "family": info.family, "task": info.task, "backend": info.backend,
                "window": info.window, "params": ec.params, "n_params": info.n_params, "shape": list(shape),
                **({} if is_tracker(engine) else {"hop": hop, **({"lag": lag} if lag else {})})}))
            sha = getattr(engine, "artifact_sha256", None)
            if sha:
                self._artifacts[ec.label] = sha
            # new dicts, not updates: other threads (views, status) may be iterating the old ones
            self.config = self.config.model_copy(update={"engines": [*self.config.engines, ec]})
            self._frame_shapes = {**self._frame_shapes, ec.label: tuple(shape[1:])}
            if not is_tracker(engine):
                self.hops = {**self.hops, ec.label: hop}
                self.lags = {**self.lags, ec.label: lag}
            self.engines = {**self.engines, ec.label: engine}
            self.bindings = {**self.bindings, ec.label: source}
            self._rings.append(ring)
            self._workers.append(worker)
            worker.start()
            self.streams[source].consumers.append(ring.push)  # the acquisition thread's next item on
            return ec.label

    def start_recording(self, path: str | Path) -> None:
        """Record every item and result from now on into a new file at `path`.

        Raises RecordingError (naming the path) if the file cannot be created; the
        session goes on unrecorded then.
        """
        if self.recorder is not None:
            raise SessionError(f"already recording to {self.recorder.path}")
        rec = self._new_recorder(path)
        self.record_path, self.recorder = Path(path), rec

    def _new_recorder(self, path: str | Path) -> Recorder:
        rec = Recorder(path, {n: s.info for n, s in self.streams.items()}, self._specs,
                       config=self.resolved_config().to_toml_dict(),
                       versions={"app": __version__, "engines": self._artifacts})
        rec.start()
        return rec

    def rotate_recording(self, path: str | Path) -> Path:
        """Go on recording into a new file at `path` (`mbdl run --rotate-min`): the new file is
        created first, then the switch happens under the lock every put takes, so each item and
        result goes to exactly one of the two files; the old file is written out and closed, and
        its path returned. Raises SessionError when not recording, RecordingError (the old file
        goes on) when the new one cannot be created."""
        if self.recorder is None:
            raise SessionError(f"cannot rotate the recording to {path}: not recording")
        new = self._new_recorder(path)
        with self._rec_lock:
            old, self.recorder = self.recorder, new
            self.record_path = Path(path)
        self._last_recording = old  # stop() waits for it if a Ctrl-C/SIGTERM cuts this join short
        old.stop()
        return old.path

    def stop_recording(self) -> Path | None:
        """Write out everything queued and close the file; returns its path."""
        with self._rec_lock:
            rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        rec.stop()
        self._last_recording = rec
        return rec.path

    def _record_item(self, stream: str, item) -> None:
        with self._rec_lock:  # stop_recording() cannot slip between the check and the put
            if self.recorder is not None:
                self.recorder.put_item(stream, item)

    def _record_result(self, result) -> None:
        with self._rec_lock:
            if self.recorder is not None:
                self.recorder.put_result(result)

    def _wire(self) -> None:
        # the recorder's consumer comes first: an item is queued for the file before
        # any engine can produce a result from it
        for name, stream in self.streams.items():
            stream.consumers.append(lambda item, n=name: self._record_item(n, item))
        # each engine's results go to the recorder, then to its map and the engines chained to it
        sinks: dict[str, list] = {label: [self._record_result] for label in self.engines}
        for label, sink in self.maps.items():
            sinks[label].append(sink)
        chained: dict[str, FrameRing] = {}  # a chained engine's ring, fed by its input's results
        for ec in self.config.engines:
            if ec.input:
                # the input publishes its frames in bursts of its hop: keep two bursts in order
                ring = chained[ec.label] = FrameRing(self.engines[ec.label].info.window,
                                                     self._frame_shapes[ec.input], self.hops[ec.label],
                                                     backlog=2 * self.hops.get(ec.input, 1))
                sinks[ec.input].append(lambda r, push=ring.push: push(frame_of_result(r)))
        for label, engine in self.engines.items():
            source = self.bindings[label]
            on_result = fan_out(sinks[label])
            if is_tracker(engine):
                q = SampleQueue()
                w = TrackerWorker(label, source, engine, self.bus, self._stop,
                                  on_result, queue=q)
            else:
                q = chained.get(label) or FrameRing(engine.info.window, self.streams[source].info.shape,
                                                    self.hops[label])
                w = ImagingWorker(label, source, engine, self.bus, self._stop, on_result, ring=q,
                                  lag=self.lags.get(label, 0))
            if label not in chained:
                self.streams[source].consumers.append(q.push)
            self._rings.append(q)
            self._workers.append(w)
        # the stage-tracking loop (if configured) acts on each frame after the engines' rings are fed
        self.control = control_loop(self.config.control, self.streams)
        for name, stream in self.streams.items():
            keep = 2 if stream.info.kind == "frames" else self.SAMPLE_HISTORY
            recent = self._recent[name] = deque(maxlen=keep)
            stream.consumers.append(recent.append)
            self._acq.append(AcquisitionThread(stream.source, stream.stats, stream.consumers,
                                               self._stop, stream.speed))

    def truth_image(self, stream: str) -> np.ndarray | None:
        """A stream's static truth image, when its source has one (sim:smlm's filaments on the
        fine grid, rebuilt from the meta of the live source or of the recording); cached. None
        for streams without one."""
        if stream not in self._truth_images:
            meta = self.streams[stream].info.meta
            image = None
            if meta.get("simulator") == "smlm":
                from drivers.sim.smlm import filament_from_meta

                image = filament_from_meta(meta)
            self._truth_images[stream] = image
        return self._truth_images[stream]

    def latest_item(self, stream: str):
        """The newest Frame/Sample of `stream`, or None before the first (any thread)."""
        recent = self._recent.get(stream)
        return recent[-1] if recent else None

    def recent_items(self, stream: str) -> list:
        """The last items of `stream` (2 frames or SAMPLE_HISTORY samples), oldest first."""
        return list(self._recent.get(stream, ()))

    # ---- running ----------------------------------------------------------------------
    @property
    def sources_done(self) -> bool:
        """True when every source has ended or failed (e.g. a replay reached its end)."""
        return all(not a.is_alive() for a in self._acq) and bool(self._acq)

    def run(self, duration: float | None, on_tick=None, tick: float = 1.0) -> None:
        """Block for `duration` seconds (None: until all sources end or Ctrl-C)."""
        t_end = None if duration is None else time.monotonic() + duration
        next_tick = time.monotonic() + tick
        while not self.sources_done:
            now = time.monotonic()
            if t_end is not None and now >= t_end:
                break
            time.sleep(max(0.0, min(0.05, next_tick - now)))
            if on_tick and time.monotonic() >= next_tick:
                next_tick += tick
                on_tick(self.status())

    def stop(self) -> None:
        """Stop acquisition, then engines, then write out everything queued; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._t_stop = time.monotonic()  # the run's span ends here, not after teardown
        self._stop.set()
        for a in self._acq:
            a.join(5.0)
        for r in self._rings:
            r.close()
        for w in self._workers:
            w.join(10.0)
        for sink in self.maps.values():
            sink.flush()
        self._close_sources()
        rotated_out = self._last_recording
        self.stop_recording()
        if rotated_out is not None and rotated_out.is_alive():  # closing since a rotation
            rotated_out.stop()

    def _close_sources(self) -> None:
        for s in self.streams.values():
            try:
                s.source.close()
            except DriverError as e:
                log.warning("%s", e)

    def __enter__(self) -> Session:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> SessionStatus:
        rec = None
        r = self.recorder or self._last_recording
        if r is not None:
            rec = {"path": str(r.path), "state": r.state, "error": r.error,
                   "backlog": r.backlog, "max_backlog": r.max_backlog, "written": r.counts()}
        engines_ = self.bus.snapshot()
        for label, hop in self.hops.items():  # the chosen set-up, for status lines
            engines_[label]["hop"] = hop
        return SessionStatus(
            elapsed_s=(self._t_stop or time.monotonic()) - self._t_start,
            sources={n: {**s.stats.snapshot(), "kind": s.info.kind, "shape": list(s.info.shape)}
                     for n, s in self.streams.items()},
            engines=engines_,
            recorder=rec,
            rss_mb=psutil.Process(os.getpid()).memory_info().rss / 2**20,
            running=self._started and not self._stopped,
        )

