"""Live microscopy: blinking frames from sim:smlm through the microscopy engines, every frame
recorded, each engine's super-resolved image accumulating into a recorded map, and a replay of
the recording through the same engines."""

import numpy as np
import pytest

import engines
from drivers.recording import RecordingReader
from mbdl_app.bench.smlm_live import run_smlm_live
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session import Session
from mbdl_app.session.maps import map_label
from mbdl_app.session.replay import compare_results, replay_config

SMLM = SourceConfig(name="smlm", uri="sim:smlm?seed=4&rate=100&size=24&density=2")
STACK = EngineConfig(name="sparcom", hop=10, params={"window": 20, "iterations": 20})
FIT = EngineConfig(name="smlm-fit")


def _session(path, seconds, cfg):
    s = Session(cfg, record=path)
    s.start()
    s.run(seconds)
    s.stop()
    return s, s.status()


def test_a_microscopy_session_records_every_frame_and_accumulates_each_engines_map(tmp_path):
    path = tmp_path / "smlm.h5"
    s, st = _session(path, 2.0, SessionConfig(sources=[SMLM], engines=[STACK, FIT]))
    assert s.truth_image("smlm").shape == (24 * 8, 24 * 8)  # the filaments on the fine grid
    with RecordingReader(path) as rec:
        index = rec.arrays("smlm", ["index"])["index"]
        stack = rec.result_arrays("smlm", "sparcom")
        stack_map = rec.result_arrays("smlm", map_label("sparcom"))["data"]
        fits = rec.result_arrays("smlm", "smlm-fit")["data"]
        fit_map = rec.result_arrays("smlm", map_label("smlm-fit"))["data"]
    # nothing recorded is lost: every delivered frame, in order
    assert len(index) == st.sources["smlm"]["items"] >= 150
    assert np.array_equal(index, np.arange(len(index)))
    # SPARCOM gives one SR image of its 20-frame window every 10 frames, on the x4 grid
    assert stack["data"].shape[1:] == (1, 1, 96, 96)
    assert np.array_equal(np.diff(stack["index"]) % 10, np.zeros(len(stack["index"]) - 1))
    assert stack["data"].min() >= 0 and stack["data"].max() > 0
    # each map is the sum of its engine's images so far (the last one flushed at stop)
    assert np.allclose(stack_map[-1], stack["data"].sum(0), rtol=1e-5)
    assert fits.shape[1:] == (1, 1, 192, 192) and np.array_equal(fit_map[-1], fits.sum(0))
    assert fit_map[-1].sum() > 0  # emitters were localized


@pytest.mark.slow
def test_a_replayed_microscopy_recording_reproduces_the_live_results(tmp_path):
    live = tmp_path / "live.h5"
    _session(live, 1.5, SessionConfig(sources=[SMLM], engines=[STACK, FIT]))
    again = tmp_path / "again.h5"
    s = Session(replay_config(live, speed=0), record=again)
    s.start()
    s.run(30)
    s.stop()
    diff = compare_results(live, again)
    for key in ("smlm/sparcom", "smlm/smlm-fit"):
        assert diff[key]["common"] > 0 and diff[key]["max_abs_diff"] <= 1e-4, (key, diff[key])


@pytest.mark.slow
@pytest.mark.skipif(not {"lsparcom", "deep-storm"} <= set(engines.available()),
                    reason="the shipped lsparcom and deep-storm artifacts are needed")
def test_the_live_smlm_bench_checks_the_recording_and_every_map(tmp_path):
    # LSPARCOM reads the last 350 frames: 5 s at 100 frames/s gives it windows to map
    report = run_smlm_live(tmp_path, duration=5.0, size=24, rate=100, log=lambda *_: None)
    assert report["recording"]["frames"] == report["source"]["items"] > 100
    assert report["targets"]["live_frames_lost"]["measured"] == 0
    assert set(report["maps"]) == {map_label(e) for e in ("sparcom", "lsparcom", "deep-storm", "smlm-fit")}
    assert all(m["publications"] >= 1 for m in report["maps"].values())
