"""Real device endpoints in live sessions: a serial sensor on a pty, a video file."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tty

import cv2
import numpy as np
import pytest

from drivers.recording import RecordingReader
from drivers.serial_sensor import format_line
from drivers.sim.lorenz import LorenzParams, LorenzSimulator
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session import Session

pytestmark = pytest.mark.skipif(os.name != "posix", reason="pseudo-terminals are POSIX")


class Pty:
    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1


@pytest.mark.slow
def test_mbdl_run_on_a_serial_sensor_with_the_ekf_records_every_valid_sample(tmp_path):
    pty = Pty()
    out = tmp_path / "serial.h5"
    x, y = LorenzSimulator(LorenzParams(seed=9)).trajectories(1, 400)
    uri = f"serial:{pty.port}?format=nmea&fields=3"
    p = subprocess.Popen([sys.executable, "-m", "mbdl_app.cli", "run", "--source", uri,
                          "--engine", "ekf", "--record", str(out), "--duration", "4"],
                         stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        while not p.stderr.readline().startswith("t="):  # the port is open and read
            assert p.poll() is None, p.stderr.read()
        for k in range(400):  # 400 valid lines at ~400/s, a garbage line every 50
            os.write(pty.master, format_line("nmea", k * 0.02, y[0, k]))
            if k % 50 == 0:
                os.write(pty.master, b"\x00\xffnoise,1,2\n$MBDL,1,2,3,4*00\r\n")
            time.sleep(0.0025)
        stdout, stderr = p.communicate(timeout=30)
    finally:
        pty.close()
    assert p.returncode == 0, stderr
    with RecordingReader(out) as rec:
        a = rec.arrays("serial" if "serial" in rec.streams else rec.streams[0])
        stream = rec.streams[0]
        res = rec.result_arrays(stream, "ekf", ["index", "data"])
    assert len(a["index"]) == 400
    np.testing.assert_array_equal(a["data"], y[0])  # every valid line, bit-exact
    np.testing.assert_allclose(a["t"], np.arange(400) * 0.02)
    assert len(res["index"]) == 400  # the filter stepped through every sample


def test_a_video_file_feeds_the_svd_filter_like_sim_ceus(tmp_path):
    clip = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 50.0, (64, 48))
    rng = np.random.default_rng(0)
    background = rng.integers(0, 200, (48, 64), dtype=np.uint8)
    for k in range(40):  # a static background with a moving bright spot
        img = background.copy()
        img[20:26, k:k + 6] = 255
        vw.write(cv2.cvtColor(img, cv2.COLOR_GRAY2BGR))
    vw.release()
    cfg = SessionConfig(
        sources=[SourceConfig(name="clip", uri=f"video:{clip}?iq=1&speed=1")],
        engines=[EngineConfig(name="svd-filter", params={"k": 1, "window": 8})])
    s = Session(cfg)
    s.start()
    s.run(10.0)
    s.stop()
    st = s.status()
    assert st.sources["clip"]["state"] == "ended" and st.sources["clip"]["items"] == 40
    assert st.engines["svd-filter"]["results"] >= 20
    last = s.bus.latest("svd-filter").data
    assert last.shape == (1, 2, 48, 64)
    mag = np.abs(last[0, 0])
    # the static background is filtered out; the moving spot stays
    assert mag[20:26].max() > 5 * np.median(mag)


@pytest.mark.slow
def test_an_unplugged_serial_sensor_is_reported_and_the_session_reconnects(tmp_path):
    link = tmp_path / "ttyUSB0"
    first, second = Pty(), None
    link.symlink_to(first.port)
    stop = threading.Event()
    current = {"pty": first}

    def device():
        k = 0
        while not stop.is_set():
            try:
                os.write(current["pty"].master, format_line("csv", k * 0.01, [k, 0.0, 0.0]))
                k += 1
            except OSError:
                pass  # unplugged
            time.sleep(0.005)

    cfg = SessionConfig(sources=[SourceConfig(name="s", uri=f"serial:{link}?format=csv&fields=3")],
                        engines=[EngineConfig(name="ekf")])
    session = Session(cfg)
    session.start()
    th = threading.Thread(target=device, daemon=True)
    th.start()
    try:
        session.run(0.7)
        before = session.status().sources["s"]
        assert before["state"] == "running" and before["items"] > 50
        first.close()
        link.unlink()
        session.run(0.7)
        during = session.status().sources["s"]
        assert during["state"] == "error" and str(link) in during["error"]
        assert during["errors"] == 1
        second = Pty()
        current["pty"] = second
        link.symlink_to(second.port)
        session.run(2.5)
        after = session.status()
        assert after.sources["s"]["state"] == "running"
        assert after.sources["s"]["items"] > during["items"] + 50
        assert after.engines["ekf"]["state"] == "running"
    finally:
        stop.set()
        session.stop()
        th.join(2)
        for p in (first, second):
            if p:
                p.close()
