"""End-to-end headless sessions on the real simulators, engines and HDF5 recorder."""

import numpy as np
import pytest

from drivers.recording import RecordingReader
from engines.base import EngineInfo
from engines.imaging.svd_filter import SVDFilter
from engines.load import register
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.errors import SessionError
from mbdl_app.session import Session
from mbdl_app.session.replay import compare_results, replay_config

SMALL = [SourceConfig(name="ceus", uri="sim:ceus?seed=2&rate=100&size=32"),
         SourceConfig(name="lorenz", uri="sim:lorenz?seed=2&rate=200&r2=1")]
ENGINES = [EngineConfig(name="svd-filter", source="ceus", params={"k": 1, "window": 8}),
           EngineConfig(name="ekf", source="lorenz")]


def _run(cfg, seconds, record=None):
    s = Session(cfg, record=record)
    s.start()
    s.run(seconds)
    s.stop()
    return s.status()


@pytest.mark.slow
def test_session_records_every_item_and_every_result(tmp_path):
    path = tmp_path / "live.h5"
    st = _run(SessionConfig(sources=SMALL, engines=ENGINES), 2.0, path)
    assert st.sources["ceus"]["items"] >= 150 and st.sources["lorenz"]["items"] >= 300
    assert st.engines["svd-filter"]["results"] > 20 and st.engines["ekf"]["results"] > 300
    with RecordingReader(path) as rec:
        for name, src in st.sources.items():
            assert rec.n_items(name) == src["items"]
            idx = rec.arrays(name)["index"]
            assert np.array_equal(idx, np.arange(len(idx)))  # nothing lost, in order
        for engine, e in st.engines.items():
            assert len(rec.result_arrays(e["stream"], engine)["index"]) == e["results"]
    # a tracker steps through every sample, the last ones included
    assert st.engines["ekf"]["results"] == st.sources["lorenz"]["items"]
    # the EKF filters: its error is far below the observation noise (r2 = 1 -> 0 dB)
    assert st.engines["ekf"]["mse_db_overall"] < -3.0
    assert np.isfinite(st.engines["svd-filter"]["mse_db_overall"])


@pytest.mark.slow
def test_replay_reproduces_the_live_outputs_of_deterministic_engines(tmp_path):
    live, again = tmp_path / "live.h5", tmp_path / "replay.h5"
    _run(SessionConfig(sources=SMALL, engines=ENGINES), 2.0, live)
    cfg = replay_config(live, speed=2.0)
    assert {e.name for e in cfg.engines} == {"svd-filter", "ekf"}
    st = _run(cfg, 10.0, again)  # ends when the replay ends
    assert all(s["state"] == "ended" for s in st.sources.values())
    cmp = compare_results(live, again)
    assert set(cmp) == {"ceus/svd-filter", "lorenz/ekf"}
    for key, c in cmp.items():
        assert c["common"] > 10, key
        assert c["max_abs_diff"] == 0.0, key


class _Broken(SVDFilter):
    """An SVD filter that fails on its third real call (after the warm-up)."""

    def __init__(self):
        super().__init__(k=1, window=4)
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        if self.calls == 4:
            raise RuntimeError("simulated fault in the engine")
        return super().__call__(x)


@pytest.mark.slow
def test_an_engine_that_raises_is_stopped_and_the_others_go_on():
    register("broken-filter", lambda *, backend="auto": _Broken())
    cfg = SessionConfig(sources=SMALL, engines=[
        EngineConfig(name="broken-filter", source="ceus"),
        EngineConfig(name="svd-filter", source="ceus", params={"k": 1, "window": 4}),
        EngineConfig(name="ekf", source="lorenz")])
    st = _run(cfg, 1.5)
    assert st.engines["broken-filter"]["state"] == "failed"
    assert "simulated fault" in st.engines["broken-filter"]["error"]
    assert st.engines["broken-filter"]["results"] == 2 * 4  # two blocks of 4 frames, then the fault
    assert st.engines["svd-filter"]["state"] == "stopped"
    assert st.engines["svd-filter"]["results"] > 50 and st.engines["ekf"]["results"] > 200


def test_an_engine_on_the_wrong_kind_of_source_is_a_session_error():
    cfg = SessionConfig(sources=SMALL, engines=[EngineConfig(name="ekf", source="ceus")])
    with pytest.raises(SessionError, match="needs a samples source"):
        Session(cfg).start()


def test_an_engine_without_a_source_reads_the_first_source_of_its_kind():
    s = Session(SessionConfig(sources=SMALL, engines=[EngineConfig(name="ekf")]))
    s.start()
    s.stop()
    assert s.bindings == {"ekf": "lorenz"}


def test_engine_info_is_declared_for_the_metrics_view():
    info = SVDFilter().info
    assert isinstance(info, EngineInfo) and info.family == "model-based"


@pytest.mark.slow
def test_a_windowed_engine_gives_one_result_per_frame_in_blocks_or_sliding(tmp_path):
    WHOLE = {"k": 1, "window": 8, "output": "all"}  # every frame of the window out
    path = tmp_path / "hop.h5"
    cfg = SessionConfig(sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=2&rate=100&size=32")],
                        engines=[EngineConfig(name="svd-filter", id="block", params=WHOLE),
                                 EngineConfig(name="svd-filter", id="sliding", hop=1, params=WHOLE)])
    st = _run(cfg, 1.5, path)
    n = st.sources["ceus"]["items"]
    with RecordingReader(path) as rec:
        block = rec.result_arrays("ceus", "block")
        sliding = rec.result_arrays("ceus", "sliding")
        assert rec.result_info("ceus", "block")["hop"] == 8
        frames = rec.arrays("ceus")
    # blocks: every frame of every complete block once, in order, one output frame each
    assert block["data"].shape[1:] == (1, 2, 32, 32)
    assert np.array_equal(block["index"], np.arange(n // 8 * 8)) and st.engines["block"]["skipped"] == 0
    # sliding: one result per frame from the first full window on; a frame that arrived while
    # the engine was busy is skipped (latest wins) and counted
    idx = sliding["index"]
    assert idx[0] == 7 and np.all(np.diff(idx) > 0) and idx[-1] <= n - 1
    assert len(idx) + st.engines["sliding"]["skipped"] >= n - 7 - 2  # at most the last in flight
    # the block result of frame i is the SVD filter of the block holding i, frame i of it
    f = SVDFilter(**WHOLE)
    d = frames["data"][8:16][None]
    assert np.allclose(block["data"][8:16, 0], f(d)[0], atol=1e-5)
    # and a sliding result of frame i is the last frame of the window i - 7 .. i
    for j in (0, len(idx) // 2, len(idx) - 1):
        i = idx[j]
        assert np.allclose(sliding["data"][j, 0], f(frames["data"][i - 7:i + 1][None])[0, -1], atol=1e-5)


@pytest.mark.slow
def test_a_sliding_engine_with_a_lag_publishes_each_windows_centre_frame(tmp_path):
    """lag = 4 of a window of 8 at hop 1: frame i's result is frame i of the window i - 3 .. i + 4
    (its centre, where a separator does best: position 3 of 0..7), published 4 frames late."""
    WHOLE = {"k": 1, "window": 8, "output": "all"}
    path = tmp_path / "lag.h5"
    cfg = SessionConfig(sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=2&rate=100&size=32")],
                        engines=[EngineConfig(name="svd-filter", id="centre", hop=1, lag=4, params=WHOLE)])
    st = _run(cfg, 1.5, path)
    with RecordingReader(path) as rec:
        out = rec.result_arrays("ceus", "centre")
        assert rec.result_info("ceus", "centre")["lag"] == 4
        frames = rec.arrays("ceus")
    idx = out["index"]
    assert idx[0] == 3 and np.all(np.diff(idx) > 0) and idx[-1] <= st.sources["ceus"]["items"] - 5
    f = SVDFilter(**WHOLE)
    for j in (0, len(idx) // 2, len(idx) - 1):
        i = idx[j]
        assert np.allclose(out["data"][j, 0], f(frames["data"][i - 3:i + 5][None])[0, 3], atol=1e-5)


@pytest.mark.parametrize(("hop", "lag", "params", "message"), [
    (1, 8, {"k": 1, "window": 8, "output": "all"}, "lag 8 exceeds window - hop = 7"),
    (4, 5, {"k": 1, "window": 8, "output": "all"}, "lag 5 exceeds window - hop = 4"),
    (1, 2, {"k": 1, "window": 8, "output": "last"}, "lag 2 needs an output frame per input frame"),
])
def test_a_lag_the_window_cannot_give_is_a_session_error(hop, lag, params, message):
    cfg = SessionConfig(sources=SMALL[:1], engines=[EngineConfig(name="svd-filter", hop=hop, lag=lag,
                                                                 params=params)])
    with pytest.raises(SessionError, match=message):
        Session(cfg).start()


def test_a_hop_beyond_the_window_is_a_session_error():
    cfg = SessionConfig(sources=SMALL[:1], engines=[EngineConfig(name="svd-filter", hop=9,
                                                                 params={"k": 1, "window": 8})])
    with pytest.raises(SessionError, match="hop 9 exceeds its window of 8"):
        Session(cfg).start()


def test_an_engine_with_one_output_per_window_gives_one_result_per_hop(tmp_path):
    """A stack-level engine (one output frame per window, as SPARCOM's image of a stack) hops
    up to its window and publishes one result per call, at the window's newest frame."""
    LAST = {"k": 1, "window": 8, "output": "last"}
    path = tmp_path / "stack.h5"
    cfg = SessionConfig(sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=2&rate=100&size=32")],
                        engines=[EngineConfig(name="svd-filter", id="stack", hop=4, params=LAST)])
    st = _run(cfg, 1.2, path)
    with RecordingReader(path) as rec:
        out = rec.result_arrays("ceus", "stack")
        frames = rec.arrays("ceus")
    idx = out["index"]
    assert len(idx) >= 5 and st.engines["stack"]["skipped"] == 0
    assert np.array_equal(idx, 7 + 4 * np.arange(len(idx)))  # windows end at frames 8, 12, 16, ...
    i = idx[2]
    assert np.allclose(out["data"][2, 0], SVDFilter(**LAST)(frames["data"][i - 7:i + 1][None])[0, -1],
                       atol=1e-5)


def test_a_session_of_onnx_runtime_and_numpy_engines_never_imports_torch():
    # the edge session (CORONA, ULM, KalmanNet, LISTA on ONNX Runtime, the numpy EKF) with torch
    # installed: setting torch's thread count must not import it (~190 MB of RSS for nothing)
    import subprocess
    import sys

    code = ("import sys, time\n"
            "from mbdl_app.config import load_config\n"
            "from mbdl_app.session.session import Session\n"
            "s = Session(load_config('edge')); s.start(); time.sleep(1.0); s.stop()\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"
