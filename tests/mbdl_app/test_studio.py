"""The Qt-free application controller: switching engines, recording, replay controls."""

import time

import pytest

from drivers.recording import RecordingReader
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.studio import Studio, next_part

CFG = SessionConfig(
    sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=3&rate=100&size=32"),
             SourceConfig(name="lorenz", uri="sim:lorenz?seed=3&rate=200")],
    engines=[EngineConfig(name="svd-filter", params={"k": 1, "window": 8}),
             EngineConfig(name="ekf")])


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_next_part_numbers_recording_parts(tmp_path):
    a = tmp_path / "s.h5"
    assert next_part(a).name == "s.part2.h5"
    (tmp_path / "s.part2.h5").write_text("")
    assert next_part(a).name == "s.part3.h5"
    assert next_part(tmp_path / "s.part2.h5").name == "s.part3.h5"


@pytest.mark.slow
def test_switching_engines_while_recording_continues_in_a_new_part(tmp_path):
    studio = Studio(CFG)
    changes = []
    studio.listeners.append(lambda: changes.append(studio.running))
    studio.start()
    studio.start_recording(tmp_path / "rec.h5")
    assert wait_for(lambda: studio.session.bus.latest("ekf") is not None)
    studio.set_engines([EngineConfig(name="ekf")])  # drop the SVD filter at run time
    assert set(studio.session.engines) == {"ekf"}
    assert studio.recording_path.name == "rec.part2.h5"
    assert wait_for(lambda: studio.session.bus.latest("ekf") is not None)
    path = studio.stop_recording()
    studio.stop()
    assert changes and changes[-1] is False
    with RecordingReader(tmp_path / "rec.h5") as first, RecordingReader(path) as second:
        assert ("ceus", "svd-filter") in first.results
        assert second.results == [("lorenz", "ekf")]
        assert second.n_items("lorenz") > 0


@pytest.mark.slow
def test_replay_controls_pause_step_seek_and_speed(tmp_path):
    rec = tmp_path / "r.h5"
    studio = Studio(CFG)
    studio.start()
    studio.start_recording(rec)
    time.sleep(1.5)
    studio.stop_recording()
    studio.open_recording(rec)
    assert studio.mode == "replay"
    studio.pause()
    time.sleep(0.3)
    lorenz = studio.session.streams["lorenz"].stats
    frozen = lorenz.items
    time.sleep(0.3)
    assert lorenz.items == frozen  # paused: nothing flows
    studio.step(5)
    assert wait_for(lambda: lorenz.items == frozen + 5)
    studio.seek(0.5)
    studio.set_speed(4.0)
    studio.play()
    assert wait_for(lambda: studio.position() is not None and studio.position() > 0.6)
    assert studio.session.bus.latest("ekf") is not None
    studio.back_to_live()
    assert studio.mode == "live" and studio.running
    studio.stop()
