"""mbdl_app/session/stage_control.py (the live stage-tracking loop), drivers/sim/particle.py, the
`[control]` session section, and the Micro-Manager path: the controller moves a pymmcore-plus
Python XY stage through the core (setXYPosition)."""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from drivers import open_source
from mbdl_app.config import load_config, parse_config
from mbdl_app.errors import ConfigError
from mbdl_app.session.session import Session
from mbdl_app.session.stage_control import StageControlLoop, centroid_offset_px

URI = "sim:particle?seed=2&speed=0&size=48&n_frames=100000"


def run_loop(source, loop, frames: int) -> np.ndarray:
    offsets = []
    for _ in range(frames):
        frame = source.read()
        loop.on_frame(frame)
        offsets.append(frame.truth["offset_um"])
    return np.array(offsets)


def test_centroid_finds_the_spot_and_reports_a_missing_one():
    rows, cols = np.indices((32, 32))
    spot = np.exp(-((cols - 20.0) ** 2 + (rows - 9.5) ** 2) / 4.5)
    np.testing.assert_allclose(centroid_offset_px(spot), [20 - 15.5, 9.5 - 15.5], atol=0.05)
    noise = np.random.default_rng(0).normal(0, 0.02, (32, 32))
    assert np.isnan(centroid_offset_px(noise)).all()


@pytest.mark.parametrize("estimator,controller", [("kf", "lqr"), ("kf", "mpc"), ("kalmannet-cv", "lqr")])
def test_loop_keeps_the_particle_centred(estimator, controller):
    """1,000 frames (100 s of the particle): RMS offset under 1.5 um (uncontrolled: tens of um)."""
    src = open_source(URI)
    src.open()
    loop = StageControlLoop(src.xy_stage(), dt=0.1, pixel_um=0.25, estimator=estimator, controller=controller,
                            s_max=5.0, burn=50)
    offsets = run_loop(src, loop, 1000)[50:]
    assert np.sqrt(np.mean(offsets**2)) < 1.5
    assert 1.0 < loop.J < 4.5  # the CV plant's oracle LQG is 2.79 (centroid noise adds a little)
    if controller == "mpc":
        assert max(abs(s.command).max() for s in loop.history) <= 5.0


def test_without_control_the_particle_drifts_out_of_the_field():
    src = open_source(URI)
    src.open()
    offsets = [src.read().truth["offset_um"] for _ in range(1000)]
    assert np.sqrt(np.mean(np.square(offsets[50:]))) > 5.0  # the field is 12 um wide


def test_switching_estimator_keeps_tracking_and_restarts_J():
    src = open_source(URI)
    src.open()
    loop = StageControlLoop(src.xy_stage(), dt=0.1, pixel_um=0.25, burn=5)
    run_loop(src, loop, 100)
    loop.set_estimator("kf-mismatched")
    assert loop.estimator_name == "kf-mismatched" and np.isnan(loop.J)
    offsets = run_loop(src, loop, 300)
    assert np.sqrt(np.mean(offsets**2)) < 2.0
    with pytest.raises(ValueError, match="unknown estimator 'ekf'"):
        loop.set_estimator("ekf")


def test_a_lost_particle_holds_the_stage_instead_of_chasing_a_guess():
    from drivers.base import Frame
    from mbdl_app.session.stage_control import MAX_COAST

    src = open_source(URI)
    src.open()
    stage = src.xy_stage()
    loop = StageControlLoop(stage, dt=0.1, pixel_um=0.25)
    run_loop(src, loop, 50)
    noise = np.random.default_rng(1).normal(0, 0.02, (40, 1, 48, 48)).astype(np.float32)
    positions = []
    for k, img in enumerate(noise):
        loop.on_frame(Frame(index=1000 + k, t=0.0, data=img))
        positions.append(stage.position_um())
    assert np.isnan(loop.history[-1].measured).all()
    held = np.array(positions[MAX_COAST + 1:])
    assert np.all(held == held[0])  # not moved once lost
    assert not np.all(np.array(positions[:MAX_COAST]) == held[0])  # it coasted on the estimate before


def test_shipped_stage_session_runs_the_loop_live():
    cfg = load_config("stage")
    assert cfg.control is not None and cfg.control.estimator == "kf"
    session = Session(cfg)
    session.start()
    try:
        time.sleep(1.5)
        loop = session.control
        assert loop is not None and len(loop.history) >= 8  # 10 frames/s
        assert session.streams["stage"].source.xy_stage().position_um() != (0.0, 0.0)
    finally:
        session.stop()


def test_control_section_names_a_bad_source_or_estimator():
    base = {"sources": [{"name": "cam", "uri": "sim:particle"}]}
    with pytest.raises(ConfigError, match="control"):
        parse_config({**base, "control": {"source": "nope"}}, "t.toml")
    with pytest.raises(ConfigError, match="estimator"):
        parse_config({**base, "control": {"estimator": "ekf"}}, "t.toml")


# ---- Micro-Manager: the stage moved through the core ---------------------------------------------
pymmcore_plus = pytest.importorskip("pymmcore_plus", reason="pymmcore-plus is not installed")


def test_mmcore_stage_is_driven_through_the_core_and_keeps_the_particle_centred(monkeypatch):
    from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore

    from drivers.mmcore import MMCoreSource
    from drivers.sim.particle import ParticleParams, ParticleSimulator

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "drivers"))
    # psygnal, not Qt signals: with a QApplication alive in this process (GUI tests run earlier)
    # pymmcore-plus would pick its Qt backend, which needs qtpy
    monkeypatch.setenv("PYMM_SIGNALS_BACKEND", "psygnal")
    mm = importlib.import_module("_mm_devices")
    xy = mm.SimXYStage()

    class DeviceStage:  # what the camera sees: the Python stage device's position
        def position_um(self):
            return xy.get_position_um()

    class ParticleCamera(SimpleCameraDevice):
        """sim:particle's frames, imaged from wherever the core's XY stage device is."""

        def __init__(self) -> None:
            super().__init__()
            self.sim = ParticleSimulator(ParticleParams(size=48), 2, DeviceStage())
            self.offsets: list[np.ndarray] = []
            self._exposure_ms = 10.0

        def get_exposure(self) -> float:
            return self._exposure_ms

        def set_exposure(self, exposure: float) -> None:
            self._exposure_ms = float(exposure)

        def sensor_shape(self) -> tuple[int, int]:
            return (48, 48)

        def dtype(self) -> np.dtype:
            return np.dtype(np.uint16)

        def snap(self, buffer: np.ndarray) -> Mapping:
            time.sleep(self._exposure_ms / 1000)
            img, truth = self.sim.next_frame()
            self.offsets.append(truth["offset_um"])
            buffer[:] = np.clip(100 + 1000 * img[0], 0, 65535).astype(np.uint16)
            return {}

    cam = ParticleCamera()
    core = UniMMCore()
    core.loadPyDevice("Cam", cam)
    core.loadPyDevice("XY", xy)
    core.initializeAllDevices()
    core.setCameraDevice("Cam")
    core.setXYStageDevice("XY")
    try:
        with MMCoreSource(core=core, exposure_ms=10.0) as src:
            loop = StageControlLoop(src.xy_stage(), dt=0.1, pixel_um=0.25, burn=20)
            done = 0
            deadline = time.monotonic() + 20
            while done < 300 and time.monotonic() < deadline:
                frame = src.read(timeout=0.5)
                if frame is not None:
                    loop.on_frame(frame)
                    done += 1
        assert done == 300
        assert core.getXYPosition() != (0.0, 0.0)  # the controller moved the device through the core
        np.testing.assert_allclose(core.getXYPosition(), loop.history[-1].stage, atol=1e-9)
        offsets = np.array(cam.offsets[20:done])
        assert np.sqrt(np.mean(offsets**2)) < 2.0
    finally:
        core.unloadAllDevices()
