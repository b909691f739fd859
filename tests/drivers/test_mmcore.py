"""Micro-Manager through pymmcore-plus: a real UniMMCore with pure-Python devices serving sim:smlm."""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus", reason="pymmcore-plus is not installed "
                    "(pip install 'mbdl-studio[microscopy]')")
from pymmcore_plus.experimental.unicore import UniMMCore  # noqa: E402

from drivers import SourceError, open_source  # noqa: E402
from drivers.base import Frame, Source  # noqa: E402
from drivers.mmcore import MMCoreSource, MMFrame  # noqa: E402
from drivers.sim.smlm import SmlmParams, SmlmSimulator  # noqa: E402

HERE = Path(__file__).parent
CONFIG = """\
#py pyDevice,Cam,_mm_devices,{camera}
#py pyDevice,XY,_mm_devices,SimXYStage
#py pyDevice,Z,_mm_devices,SimZStage
Property,Core,Initialize,1
#py Property,Core,Camera,Cam
#py Property,Core,XYStage,XY
#py Property,Core,Focus,Z
"""


@pytest.fixture
def mm(monkeypatch):
    """The python device module, importable by the name the .cfg files use."""
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("_mm_devices")


def make_core(camera) -> UniMMCore:
    core = UniMMCore()
    mm = importlib.import_module("_mm_devices")
    core.loadPyDevice("Cam", camera)
    core.loadPyDevice("XY", mm.SimXYStage())
    core.loadPyDevice("Z", mm.SimZStage())
    core.initializeAllDevices()
    core.setCameraDevice("Cam")
    core.setXYStageDevice("XY")
    core.setFocusDevice("Z")
    return core


@pytest.fixture
def core(mm):
    core = make_core(mm.SmlmCamera())
    yield core
    core.unloadAllDevices()


def read_for(src, seconds: float, stall_at: float | None = None, stall: float = 0.0) -> list:
    frames, t0, stalled = [], time.monotonic(), False
    while time.monotonic() - t0 < seconds:
        if stall_at is not None and not stalled and time.monotonic() - t0 > stall_at:
            time.sleep(stall)  # a slow consumer: the circular buffer holds the frames
            stalled = True
        f = src.read(timeout=0.05)
        if f is not None:
            frames.append(f)
    return frames


def test_frames_arrive_in_order_with_none_dropped_at_100_fps_despite_a_stalled_reader(core):
    src = MMCoreSource(core=core, exposure_ms=10.0)
    with src:
        assert isinstance(src, Source)
        frames = read_for(src, 2.0, stall_at=0.5, stall=0.4)
        assert src.info.rate_hz == pytest.approx(100.0)
    assert all(isinstance(f, MMFrame) and isinstance(f, Frame) for f in frames)
    assert 170 <= len(frames) <= 215  # 100 fps for 2 s
    assert [f.index for f in frames] == list(range(len(frames)))
    # the camera's own counter: every frame it made, in order
    assert [int(f.meta["image"]["SimFrame"]) for f in frames] == list(range(len(frames)))
    t = np.array([f.t for f in frames])
    assert np.median(np.diff(t)) == pytest.approx(0.010, abs=0.002)
    # the camera's pixels, unscaled: frame k is the simulator's frame k
    sim = SmlmSimulator(SmlmParams(size=64), 1)
    for f in frames[:3]:
        np.testing.assert_array_equal(f.data[0], sim.next_frame()[0])
        assert f.data.dtype == np.float32 and f.data.shape == (1, 64, 64)
    assert not core.isSequenceRunning()  # close stopped the sequence


def test_exposure_and_roi_from_the_uri_keys_are_applied(core):
    src = MMCoreSource(core=core, exposure_ms=20.0, roi=(8, 4, 32, 16))
    with src:
        info = src.info
        frames = read_for(src, 0.3)
        assert core.getExposure() == 20.0
    assert info.shape == (1, 16, 32)
    assert info.meta["roi"] == [8, 4, 32, 16] and info.meta["exposure_ms"] == 20.0
    assert info.rate_hz == pytest.approx(50.0)
    json.dumps(info.meta)
    assert 10 <= len(frames) <= 17  # 50 fps for 0.3 s
    sim = SmlmSimulator(SmlmParams(size=64), 1)
    np.testing.assert_array_equal(frames[0].data[0], sim.next_frame()[0][4:20, 8:40])


def test_stage_position_is_in_each_frames_meta_and_follows_moves(core):
    core.setXYPosition(12.5, -3.0)
    core.setPosition(4.0)
    with MMCoreSource(core=core, exposure_ms=10.0, stage_poll_s=0.0) as src:
        before = read_for(src, 0.1)
        core.setXYPosition(100.0, 50.0)
        core.setPosition(-2.5)
        after = read_for(src, 0.1)
    assert src.info.meta["xy_stage"] == "XY" and src.info.meta["focus"] == "Z"
    assert before and after
    assert before[0].meta["stage_xy_um"] == [12.5, -3.0] and before[0].meta["stage_z_um"] == 4.0
    assert after[-1].meta["stage_xy_um"] == [100.0, 50.0] and after[-1].meta["stage_z_um"] == -2.5
    assert all({"stage_xy_um", "stage_z_um", "image"} <= set(f.meta) for f in before + after)


def test_a_config_file_of_python_devices_streams_through_open_source(mm, tmp_path):
    cfg = tmp_path / "smlm.cfg"
    cfg.write_text(CONFIG.format(camera="SmlmCamera"))
    with open_source(f"mmcore:{cfg}?exposure=10&roi=0,0,32,32&stage_poll=0") as src:
        assert isinstance(src, MMCoreSource)
        frames = read_for(src, 0.3)
        assert src.info.meta["config"] == str(cfg.resolve())
        assert src.info.meta["camera"] == "Cam" and src.info.shape == (1, 32, 32)
    assert len(frames) >= 20 and [f.index for f in frames] == list(range(len(frames)))
    assert frames[0].meta["stage_xy_um"] == [0.0, 0.0]


def test_a_config_that_fails_to_load_is_a_one_line_source_error_naming_the_file(mm, tmp_path):
    bad = tmp_path / "broken.cfg"
    bad.write_text("#py pyDevice,Cam,_mm_devices,NoSuchCamera\nProperty,Core,Initialize,1\n")
    with pytest.raises(SourceError, match="broken.cfg") as e:
        open_source(f"mmcore:{bad}").open()
    assert "\n" not in str(e.value) and "failed to load" in str(e.value)
    with pytest.raises(SourceError, match="absent.cfg.*not found"):
        open_source(f"mmcore:{tmp_path / 'absent.cfg'}").open()


# pymmcore-plus's acquisition thread re-raises the camera's error (pytest warns about it);
# the source sees the sequence stop and reports it itself
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_camera_that_raises_mid_acquisition_gives_one_source_error_then_streams_again(mm):
    core = make_core(mm.FailingSmlmCamera())
    try:
        with MMCoreSource(core=core, exposure_ms=5.0) as src:
            frames, errors, t0 = [], [], time.monotonic()
            while len(frames) < 30 and time.monotonic() - t0 < 5.0:
                try:
                    f = src.read(timeout=0.05)
                except SourceError as e:  # the session logs it and reads on
                    errors.append(str(e))
                    continue
                if f is not None:
                    frames.append(f)
    finally:
        core.unloadAllDevices()
    assert len(errors) == 1
    assert "camera Cam stopped acquiring" in errors[0] and "\n" not in errors[0]
    assert src.restarts == 1 and len(frames) == 30
    # the index goes on across the restart; the camera skipped nothing
    assert [f.index for f in frames] == list(range(30))
    assert [int(f.meta["image"]["SimFrame"]) for f in frames] == list(range(30))


def test_unknown_camera_and_bad_uri_keys_are_source_errors_naming_the_uri(core, tmp_path):
    with pytest.raises(SourceError, match="no camera 'Nope'.*cameras: Cam"):
        MMCoreSource(core=core, camera="Nope").open()
    assert not core.isSequenceRunning()
    for uri, what in [("mmcore:x.cfg?exposure=0", "exposure"), ("mmcore:x.cfg?roi=1,2,3", "roi"),
                      ("mmcore:x.cfg?binning=2", "unknown parameter"), ("mmcore:", "no Micro")]:
        with pytest.raises(SourceError, match=what):
            open_source(uri)
    with pytest.raises(SourceError, match="roi"):
        MMCoreSource(core=core, roi=(60, 60, 32, 32)).open()  # outside the sensor
