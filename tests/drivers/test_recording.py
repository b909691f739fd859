"""Session recordings: the HDF5 format, its writer, reader and replay source."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import h5py
import numpy as np
import pytest

from drivers import open_source
from drivers.base import Frame, Sample, SourceInfo
from drivers.errors import FormatError, RecordingError, SourceEnded, SourceError
from drivers.recording import (
    FORMAT,
    FORMAT_VERSION,
    RecordingReader,
    RecordingWriter,
    ReplaySource,
    ResultRow,
    ResultSpec,
    list_streams,
    repair_recording,
)

HELPER = Path(__file__).with_name("_record_forever.py")
SHAPE = (2, 8, 8)
CAM = SourceInfo(
    "sim:ceus?seed=1",
    "frames",
    SHAPE,
    100.0,
    meta={"pixel_size": 0.1, "model": {"psf": [1.0, 2.0]}},
    truth_shapes={"density": (1, 8, 8), "positions": (4, 2)},
)
IMU = SourceInfo("sim:lorenz", "samples", (3,), 500.0, truth_shapes={"state": (3,)})
SPECS = [
    ResultSpec("cam", "lista", (1, 1, 8, 8), info={"name": "lista", "family": "unfolded"}),
    ResultSpec("imu", "kalmannet", (3,), cov_shape=(3, 3), info={"name": "kalmannet"}),
]


def make_frame(i: int) -> Frame:
    rng = np.random.default_rng(i)
    return Frame(
        index=i,
        t=i / 100,
        data=rng.standard_normal(SHAPE).astype(np.float32),
        truth={
            "density": np.full((1, 8, 8), i, np.float32),
            "positions": rng.random((4, 2)).astype(np.float32),
        },
        t_host=1000.0 + i,
    )


def make_sample(i: int) -> Sample:
    value = np.random.default_rng(i).standard_normal(3)
    return Sample(index=i, t=i / 500, value=value, truth={"state": value * 2}, t_host=2000.0 + i)


def write_recording(path: Path, n_frames: int = 20, n_samples: int = 30) -> Path:
    with RecordingWriter(
        path,
        {"cam": CAM, "imu": IMU},
        SPECS,
        config={"engines": ["lista"], "rate": 100},
        versions={"app": "0.1.0", "lista": "ab12"},
    ) as w:
        frames = [make_frame(i) for i in range(n_frames)]
        w.append_items("cam", frames[:7])
        w.append_items("cam", frames[7:])
        w.append_items("imu", [make_sample(i) for i in range(n_samples)])
        w.append_results(
            "cam",
            "lista",
            [
                ResultRow(i, i / 100, np.full((1, 1, 8, 8), i), 0.002, (i, i + 0.1, i + 0.2))
                for i in range(n_frames)
            ],
        )
        w.append_results(
            "imu",
            "kalmannet",
            [
                ResultRow(i, i / 500, np.arange(3) + i, 0.0005, (i, i, i), cov=np.eye(3) * i)
                for i in range(5)
            ],
        )
    return path


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    return write_recording(tmp_path / "session.h5")


def assert_same_item(a, b) -> None:
    assert type(a) is type(b)
    assert (a.index, a.t) == (b.index, b.t)
    assert np.array_equal(
        a.data if isinstance(a, Frame) else a.value, b.data if isinstance(b, Frame) else b.value
    )
    assert a.truth.keys() == b.truth.keys()
    for key in a.truth:
        assert np.array_equal(a.truth[key], b.truth[key])


# --- format and round trip -------------------------------------------------------------


def test_round_trip_keeps_frames_samples_truth_results_and_metadata(recording: Path) -> None:
    with RecordingReader(recording) as r:
        assert r.streams == ["cam", "imu"]
        assert r.info("cam") == CAM
        assert r.info("imu") == IMU
        assert (r.n_items("cam"), r.n_items("imu")) == (20, 30)
        for i in (0, 7, 19):
            got = r.item("cam", i)
            assert_same_item(got, make_frame(i))
            assert got.t_host == 1000.0 + i
        for i in (0, 29):
            got = r.item("imu", i)
            assert_same_item(got, make_sample(i))
            assert got.value.dtype == np.float64
        cam = r.arrays("cam")
        assert set(cam) == {"t", "index", "t_host", "data", "truth/density", "truth/positions"}
        assert cam["data"].dtype == np.float32 and cam["data"].shape == (20, *SHAPE)
        assert np.array_equal(cam["index"], np.arange(20))
        assert np.array_equal(cam["truth/density"][:, 0, 0, 0], np.arange(20))

        assert r.results == [("cam", "lista"), ("imu", "kalmannet")]
        assert r.result_info("cam", "lista") == {"name": "lista", "family": "unfolded"}
        lista = r.result_arrays("cam", "lista")
        assert set(lista) == {"index", "t", "data", "latency", "t_host"}
        assert lista["data"].shape == (20, 1, 1, 8, 8)
        assert np.array_equal(lista["data"][:, 0, 0, 0, 0], np.arange(20))
        assert np.array_equal(lista["t_host"][3], [3, 3.1, 3.2])
        knet = r.result_arrays("imu", "kalmannet")
        assert knet["cov"].shape == (5, 3, 3) and knet["cov"][4, 1, 1] == 4
        assert knet["data"].dtype == np.float32


def test_file_carries_format_attributes_and_chunked_resizable_series(recording: Path) -> None:
    with RecordingReader(recording) as r:
        assert r.format_version == FORMAT_VERSION
        assert r.config == {"engines": ["lista"], "rate": 100}
        assert r.versions == {"app": "0.1.0", "lista": "ab12"}
        assert datetime.fromisoformat(r.created).utcoffset() == timedelta(0)
        assert not r.unfinished
    with h5py.File(recording, "r") as f:
        assert f.attrs["format"] == FORMAT and f.attrs["format_version"] == 1
        assert json.loads(f["streams/cam"].attrs["meta"]) == CAM.meta
        for name in ("t", "index", "t_host", "data", "truth/density"):
            ds = f[f"streams/cam/{name}"]
            assert ds.maxshape[0] is None and ds.chunks is not None
            assert ds.chunks[0] * ds.dtype.itemsize * np.prod(ds.shape[1:]) <= 1 << 20
        assert f["streams/cam/index"].dtype == np.int64
        assert f["results/cam/lista/t_host"].shape == (20, 3)


def test_writer_counts_items_and_results(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "r.h5", {"cam": CAM}, SPECS[:1]) as w:
        w.append_items("cam", [make_frame(i) for i in range(3)])
        w.append_results(
            "cam", "lista", [ResultRow(0, 0.0, np.zeros((1, 1, 8, 8)), 0.0, (0, 0, 0))]
        )
        assert w.counts == {"cam": 3, ("cam", "lista"): 1}


def test_maybe_flush_waits_for_the_flush_interval(tmp_path: Path) -> None:
    w = RecordingWriter(tmp_path / "r.h5", {"cam": CAM}, flush_interval=0.05)
    assert not w.maybe_flush()  # nothing pending
    w.append_items("cam", [make_frame(0)])
    time.sleep(0.06)
    assert w.maybe_flush()
    w.append_items("cam", [make_frame(1)])
    assert not w.maybe_flush()  # too soon
    w.close()
    w.close()  # idempotent
    with pytest.raises(RecordingError, match="closed"):
        w.append_items("cam", [make_frame(2)])


def test_item_not_matching_its_declaration_gives_recording_error(tmp_path: Path) -> None:
    with RecordingWriter(tmp_path / "r.h5", {"cam": CAM}) as w:
        bad = make_frame(0)
        bad.data = np.zeros((1, 8, 8), np.float32)
        with pytest.raises(RecordingError, match=r"r\.h5.*'cam'.*\(1, 8, 8\)"):
            w.append_items("cam", [bad])
        no_truth = make_frame(1)
        del no_truth.truth["density"]
        with pytest.raises(RecordingError, match="no truth 'density'"):
            w.append_items("cam", [no_truth])
        with pytest.raises(RecordingError, match="records frames, got a Sample"):
            w.append_items("cam", [make_sample(0)])
        with pytest.raises(RecordingError, match="'imu' was not declared"):
            w.append_items("imu", [make_sample(0)])
        assert w.counts["cam"] == 0


def test_unwritable_path_gives_recording_error(tmp_path: Path) -> None:
    path = tmp_path / "missing_dir" / "r.h5"
    with pytest.raises(RecordingError, match=f"cannot write recording {path}: No such file"):
        RecordingWriter(path, {"cam": CAM})


def test_existing_recording_is_never_overwritten(recording: Path) -> None:
    with pytest.raises(RecordingError, match="File exists"):
        RecordingWriter(recording, {"cam": CAM})
    assert list_streams(recording) == ["cam", "imu"]


# --- files that are not (whole) recordings -----------------------------------------------


def test_truncated_recording_gives_format_error_naming_the_file(recording: Path) -> None:
    data = recording.read_bytes()
    cut = recording.with_name("cut.h5")
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match=f"{cut}: truncated"):
        RecordingReader(cut)


def test_foreign_hdf5_file_gives_format_error(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(FormatError, match=f"{path}: not an MBDL Studio recording"):
        RecordingReader(path)


def test_non_hdf5_file_gives_format_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("not hdf5 at all")
    with pytest.raises(FormatError, match=f"{path}: not an HDF5 file"):
        RecordingReader(path)


def test_short_dataset_missing_dataset_and_unknown_version_give_format_error(
    recording: Path,
) -> None:
    with h5py.File(recording, "r+") as f:
        f["streams/imu/t"].resize(10, axis=0)
    with pytest.raises(FormatError, match=r"stream 'imu': inconsistent lengths .*'t': 10"):
        RecordingReader(recording)
    with h5py.File(recording, "r+") as f:
        f["streams/imu/t"].resize(30, axis=0)
        del f["streams/cam/t_host"]
    with pytest.raises(FormatError, match=r"stream 'cam': missing dataset 't_host'"):
        RecordingReader(recording)
    with h5py.File(recording, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(FormatError, match="format_version 2 is not supported"):
        RecordingReader(recording)


# --- replay ------------------------------------------------------------------------------


def test_replay_yields_the_recorded_items_in_order(recording: Path) -> None:
    with ReplaySource(recording, stream="cam", speed=0) as src:
        assert src.info.uri == f"replay:{recording}"
        assert src.info.meta["recorded_uri"] == CAM.uri
        assert src.info.meta["model"] == CAM.meta["model"]
        assert (src.info.kind, src.info.shape, src.info.truth_shapes) == (
            "frames",
            SHAPE,
            CAM.truth_shapes,
        )
        items = [src.read() for _ in range(20)]
        for i, item in enumerate(items):
            assert_same_item(item, make_frame(i))
        with pytest.raises(SourceEnded):
            src.read()


def test_replay_at_speed_zero_runs_as_fast_as_it_can(recording: Path) -> None:
    with ReplaySource(recording, stream="cam", speed=0) as src:
        t0 = time.monotonic()
        for _ in range(20):
            assert src.read(timeout=0) is not None
        assert time.monotonic() - t0 < 0.1


def test_replay_at_speed_one_keeps_recorded_time(recording: Path) -> None:
    def replay_seconds(speed: float) -> float:
        with ReplaySource(recording, stream="cam", speed=speed) as src:
            t0 = time.monotonic()
            got = 0
            while got < 20:
                got += src.read(timeout=0.05) is not None
            return time.monotonic() - t0

    assert 0.17 <= replay_seconds(1.0) < 0.35  # 20 items at 100 Hz: t = 0 .. 0.19 s
    assert 0.08 <= replay_seconds(2.0) < 0.2


def test_replay_returns_none_when_no_item_is_due_within_the_timeout(recording: Path) -> None:
    with ReplaySource(recording, stream="imu", speed=0.01) as src:
        assert src.read(timeout=0) is not None  # item 0 is due at once
        assert src.read(timeout=0.01) is None  # item 1 is due 0.2 s later


def test_replay_loop_restarts_with_index_and_t_increasing(recording: Path) -> None:
    with open_source(f"replay:{recording}?stream=cam&speed=0&loop=1") as src:
        items = [src.read() for _ in range(45)]
    assert [it.index for it in items] == list(range(45))
    assert np.allclose([it.t for it in items], np.arange(45) / 100)
    assert np.array_equal(items[23].data, make_frame(3).data)


def test_replay_uri_picks_the_only_stream_and_lists_streams_when_ambiguous(
    tmp_path: Path, recording: Path
) -> None:
    with pytest.raises(SourceError, match=r"2 streams \(cam, imu\)"):
        open_source(f"replay:{recording}").open()
    with pytest.raises(SourceError, match=r"no stream 'eeg'; streams: cam, imu"):
        open_source(f"replay:{recording}?stream=eeg").open()
    with pytest.raises(SourceError, match="unknown parameter"):
        open_source(f"replay:{recording}?sped=2")
    single = tmp_path / "one.h5"
    with RecordingWriter(single, {"imu": IMU}) as w:
        w.append_items("imu", [make_sample(i) for i in range(3)])
    with open_source(f"replay:{single}?speed=0") as src:
        assert [src.read().index for _ in range(3)] == [0, 1, 2]
        with pytest.raises(SourceEnded):
            src.read()


def test_replay_of_a_missing_file_gives_source_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="nothing.h5: no such file"):
        open_source(f"replay:{tmp_path / 'nothing.h5'}").open()


# --- crash safety and live reading ------------------------------------------------------


def start_writer(path: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(path), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def assert_frames_hold_their_index(r: RecordingReader) -> int:
    cam = r.arrays("cam")
    n = len(cam["index"])
    values = np.arange(n, dtype=np.float32)
    assert np.array_equal(cam["index"], np.arange(n))
    assert np.array_equal(
        cam["data"], np.broadcast_to(values[:, None, None, None], cam["data"].shape)
    )
    results = r.result_arrays("cam", "echo")
    m = len(results["index"])
    assert np.array_equal(results["index"], np.arange(m))
    assert np.all(results["data"] == np.arange(m, dtype=np.float32)[:, None, None, None, None])
    return n


def test_killed_writer_leaves_a_readable_file_with_everything_older_than_one_second(
    tmp_path: Path,
) -> None:
    path = tmp_path / "killed.h5"
    proc = start_writer(path, "--rate", "100", "--size", "64")
    time.sleep(2.5)
    t_kill = time.monotonic()
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    log = [line.split() for line in out.splitlines()]
    older_than_1s = max(int(n) for n, t in log if float(t) <= t_kill - 1.0)
    assert older_than_1s >= 50

    with RecordingReader(path) as r:  # the writer is gone: the reader repairs the file first
        assert r.repaired is not None and not r.unfinished
        assert r.config == {"test": True}
        n = assert_frames_hold_their_index(r)
        assert n >= older_than_1s
        assert len(r.result_arrays("cam", "echo")["index"]) >= older_than_1s
        assert r.repaired.kept == {"stream cam": n, "results cam/echo": n}
    with ReplaySource(path, speed=0) as src:
        assert src.read().index == 0


def kill_mid_recording(path: Path) -> int:
    """Record for 1.5 s, SIGKILL the writer; the frames it had written by then."""
    proc = start_writer(path, "--rate", "100", "--size", "16")
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return int(out.split()[-2])


def assert_plain_h5py_reads_every_committed_frame(path: Path, n: int) -> None:
    with h5py.File(path, "r") as f:  # no SWMR, default locking: what HDFView and users' scripts do
        cam = f["streams/cam"]
        assert int(cam["committed"][()]) == n
        assert {name: cam[name].shape[0] for name in ("t", "index", "t_host", "data")} == dict.fromkeys(
            ("t", "index", "t_host", "data"), n)
        assert np.array_equal(cam["data"][:, 0, 0, 0], np.arange(n, dtype=np.float32))
        assert f["results/cam/echo/data"].shape[0] == n


def test_repair_makes_a_killed_recording_open_in_plain_h5py_with_every_committed_item(
    tmp_path: Path,
) -> None:
    path = tmp_path / "killed.h5"
    written = kill_mid_recording(path)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    report = repair_recording(path)
    n = report.kept["stream cam"]
    assert written - 60 <= n <= written  # at most 0.5 s between flushes at 100 frames/s (+ slack)
    assert report.kept["results cam/echo"] == n and set(report.dropped) == set(report.kept)
    assert "kept every committed row" in report.summary() and str(path) in report.summary()
    assert_plain_h5py_reads_every_committed_frame(path, n)
    assert repair_recording(path) is None  # a closed file: nothing to do
    with RecordingReader(path) as r:
        assert r.repaired is None and not r.unfinished and r.n_items("cam") == n


def test_reader_repairs_a_killed_recording_so_plain_h5py_opens_it_afterwards(tmp_path: Path) -> None:
    path = tmp_path / "killed.h5"
    kill_mid_recording(path)
    with RecordingReader(path) as r:
        n = assert_frames_hold_their_index(r)
        assert r.repaired.kept["stream cam"] == n
    assert_plain_h5py_reads_every_committed_frame(path, n)


def test_repair_refuses_a_recording_whose_writer_is_still_running(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    proc = start_writer(path, "--rate", "100", "--size", "16")
    try:
        time.sleep(0.8)
        with pytest.raises(RecordingError, match=f"{path}.*another process has it open"):
            repair_recording(path)
        with RecordingReader(path) as r:  # read as a SWMR reader, the file left as it is
            assert r.repaired is None and r.unfinished and r.n_items("cam") > 0
    finally:
        proc.kill()
        proc.communicate()


def test_repair_of_a_closed_recording_leaves_the_file_untouched(recording: Path) -> None:
    before = recording.read_bytes()
    assert repair_recording(recording) is None
    assert recording.read_bytes() == before


def test_repair_of_a_foreign_or_missing_file_gives_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file"):
        repair_recording(tmp_path / "nope.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not hdf5")
    with pytest.raises(FormatError, match=f"{text}: not an HDF5 file"):
        repair_recording(text)


def test_reader_sees_rows_flushed_while_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    proc = start_writer(path, "--rate", "100", "--size", "32")
    try:
        time.sleep(0.8)
        with RecordingReader(path) as r:
            assert r.unfinished
            first = assert_frames_hold_their_index(r)
            time.sleep(0.8)
            second = assert_frames_hold_their_index(r)
            assert second >= first + 20  # flushes come every 0.5 s
    finally:
        proc.kill()
        proc.communicate()


def test_reader_in_the_writing_process_sees_committed_rows(tmp_path: Path) -> None:
    path = tmp_path / "same.h5"
    with RecordingWriter(path, {"cam": CAM}) as w:
        w.append_items("cam", [make_frame(i) for i in range(5)])
        w.flush()
        w.append_items("cam", [make_frame(5)])
        with RecordingReader(path) as r:
            assert r.unfinished
            assert r.n_items("cam") == 5
            w.flush()
            assert r.n_items("cam") == 6
            assert_same_item(r.item("cam", 5), make_frame(5))
