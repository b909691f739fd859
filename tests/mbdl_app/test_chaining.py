"""Chained engines in a live session: one engine's output frames feed another (CORONA -> ULM),
and a super-resolution engine's localizations accumulate into a live, recorded map."""

import numpy as np
import pytest

from drivers.recording import RecordingReader
from mbdl_app.cli import build_config
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig, parse_config
from mbdl_app.errors import ConfigError, SessionError
from mbdl_app.session import Session
from mbdl_app.session.maps import map_label
from mbdl_app.session.replay import replay_config

CEUS = SourceConfig(name="ceus", uri="sim:ceus?seed=3&rate=50&size=12")
SEPARATOR = EngineConfig(name="svd-filter", source="ceus", params={"k": 1, "window": 4})
ULM = EngineConfig(name="ulm-fista", input="svd-filter", params={"n_iter": 5, "threshold": 0.0})


def test_a_chained_engine_reads_its_input_engines_frames_and_its_map_accumulates(tmp_path):
    path = tmp_path / "chain.h5"
    s = Session(SessionConfig(sources=[CEUS], engines=[SEPARATOR, ULM]), record=path)
    s.start()
    s.run(1.5)
    s.stop()
    st = s.status()
    ulm, sep, live_map = st.engines["ulm-fista"], st.engines["svd-filter"], st.engines[map_label("ulm-fista")]
    assert ulm["state"] == sep["state"] == "stopped"
    assert 0 < ulm["results"] <= sep["results"]
    assert ulm["stream"] == "ceus"  # recorded on the source of its input
    assert live_map["results"] >= 1 and live_map["task"] == "super-resolution-map"
    # the chain's end-to-end latency runs from acquisition, so it covers the separator's time too
    assert ulm["e2e_p50_ms"] >= ulm["latency_p50_ms"]
    with RecordingReader(path) as rec:
        locs = rec.result_arrays("ceus", "ulm-fista")["data"]
        maps = rec.result_arrays("ceus", map_label("ulm-fista"))["data"]
    assert locs.shape[1:] == (1, 1, 96, 96)  # 8x finer than the 12 x 12 frames
    assert len(locs) == ulm["results"] and len(maps) == live_map["results"]
    # the last map is the sum of every localization image (flushed at stop)
    assert np.array_equal(maps[-1], locs.sum(0))
    assert s.resolved_config().engines[1].input == "svd-filter"
    # a replay of the recording runs the same chain
    assert [(e.name, e.input) for e in replay_config(path).engines] == [("svd-filter", None),
                                                                         ("ulm-fista", "svd-filter")]


def test_config_rejects_an_input_that_is_not_an_earlier_engine():
    with pytest.raises(ConfigError, match="not defined before it"):
        parse_config({"sources": [CEUS.model_dump()],
                      "engines": [ULM.model_dump(), SEPARATOR.model_dump()]}, "cfg")
    with pytest.raises(ConfigError, match="both source"):
        parse_config({"sources": [CEUS.model_dump()],
                      "engines": [SEPARATOR.model_dump(), {**ULM.model_dump(), "source": "ceus"}]}, "cfg")


def test_only_imaging_engines_chain():
    cfg = SessionConfig(sources=[SourceConfig(name="lorenz", uri="sim:lorenz?seed=1"), CEUS],
                        engines=[EngineConfig(name="ekf", source="lorenz"),
                                 {**ULM.model_dump(), "input": "ekf"}])
    with pytest.raises(SessionError, match="only imaging engines chain"):
        Session(cfg).start()


def test_cli_engine_at_an_engine_label_chains_it():
    cfg = build_config(None, ["sim:ceus?size=12"], ["svd-filter", "ulm-fista@svd-filter"])
    ulm = cfg.engines[1]
    assert (ulm.input, ulm.source) == ("svd-filter", None)
    assert cfg.engines[0].input is None


def test_an_engine_spec_names_hop_and_lag_and_rejects_a_zero_hop():
    from mbdl_app.cli import parse_engine_spec
    from mbdl_app.errors import ConfigError

    e = parse_engine_spec("corona-lite:onnxruntime@ceus/1/10")
    assert (e.name, e.backend, e.source, e.hop, e.lag) == ("corona-lite", "onnxruntime", "ceus", 1, 10)
    assert (parse_engine_spec("corona-ceus/20").hop, parse_engine_spec("corona-ceus/20").lag) == (20, 0)
    for bad in ("corona-ceus/0", "corona-ceus//3", "corona-ceus/1/x"):
        with pytest.raises(ConfigError, match="HOP"):
            parse_engine_spec(bad)


@pytest.mark.slow
def test_the_ulm_session_runs_the_motion_compensated_chain_beside_the_block_one(tmp_path):
    """`--config ulm` (issue 15): corona-ceus blocks -> ulm-blocks beside corona-mc (hop 5, lag 27)
    -> ulm-mc; here at 100 frames/s so that the 60-frame windows fill in a second."""
    from mbdl_app.config import load_config

    cfg = load_config("ulm")
    mc = next(e for e in cfg.engines if e.name == "corona-mc")
    assert (mc.hop, mc.lag) == (5, 27) and {e.label for e in cfg.engines} >= {"ulm-blocks", "ulm-mc"}
    fast = cfg.model_copy(update={"sources": [cfg.sources[0].model_copy(
        update={"uri": cfg.sources[0].uri.replace("rate=20", "rate=100")})]})
    path = tmp_path / "ulm.h5"
    s = Session(fast, record=path)
    s.start()
    s.run(3.0)
    s.stop()
    st = s.status()
    assert st.engines["ulm-mc"]["results"] > 10 and st.engines["ulm-blocks"]["results"] > 10
    with RecordingReader(path) as rec:
        idx = rec.result_arrays("ceus", "corona-mc")["index"]
        assert rec.result_info("ceus", "corona-mc")["lag"] == 27
    assert idx[0] == 28 and np.all(np.diff(idx) > 0)  # the first window ends at frame 59: frames 28-32
