"""Symbol detectors live on sim:isi: SER per engine, recorded, replayed, and the shipped `comms` config."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.recording import RecordingReader
from engines.comms.sum_product import symbol_error_rate
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig, load_config
from mbdl_app.errors import SessionError
from mbdl_app.session import Session
from mbdl_app.session.replay import compare_results, replay_config
from mbdl_app.session.report import final_tables, status_line

BLOCKS = 30
DETECTORS = ("bcjr", "viterbinet-isi", "sbrnn-isi", "lfg-adaptive")


def comms_config(uri: str) -> SessionConfig:
    return SessionConfig(sources=[SourceConfig(name="isi", uri=uri)],
                         engines=[*(EngineConfig(name=n, source="isi") for n in DETECTORS),
                                  EngineConfig(name="bcjr", id="bcjr-csi", source="isi",
                                               params={"csi_error": 0.1})])


def run(cfg: SessionConfig, record=None, seconds: float = 20.0) -> Session:
    s = Session(cfg, record=record)
    s.start()
    s.run(seconds)
    s.stop()
    return s


def test_every_detector_scores_every_block_by_its_ser_and_the_recording_holds_it(tmp_path):
    path = tmp_path / "comms.h5"
    s = run(comms_config(f"sim:isi?gamma=0.2&snr=8&seed=5&pilots=51&speed=0&n={BLOCKS}"), path)
    st = s.status()
    assert st.sources["isi"]["items"] == BLOCKS
    with RecordingReader(path) as rec:
        symbols = rec.arrays("isi", ["truth/symbols"])["truth/symbols"]
        assert symbols.shape == (BLOCKS, 500)
        for label in (*DETECTORS, "bcjr-csi"):
            e = st.engines[label]
            assert e["state"] == "stopped" and e["results"] == BLOCKS and e["skipped"] == 0
            assert np.isnan(e["mse_db_overall"])  # detectors are scored by SER, not MSE
            soft = rec.result_arrays("isi", label)["data"]
            assert soft.shape == (BLOCKS, 500)
            assert e["ser_overall"] == pytest.approx(symbol_error_rate(soft, symbols, (-1.0, 1.0)), abs=1e-12)
    ser = {label: st.engines[label]["ser_overall"] for label in st.engines}
    assert ser["bcjr"] < 0.01 and ser["bcjr-csi"] > 2 * ser["bcjr"] and ser["sbrnn-isi"] > ser["bcjr"]
    assert "SER" in status_line(st)
    final_tables(st)


def test_a_replay_through_the_recorded_detectors_reproduces_every_decision(tmp_path):
    path, again = tmp_path / "live.h5", tmp_path / "replay.h5"
    run(comms_config(f"sim:isi?seed=6&pilots=51&speed=0&n={BLOCKS}"), path)
    run(replay_config(path, speed=0), again)
    diffs = compare_results(path, again)
    assert set(diffs) == {f"isi/{label}" for label in (*DETECTORS, "bcjr-csi")}
    for key, d in diffs.items():
        assert d["common"] == BLOCKS and d["max_abs_diff"] == 0.0, key


def test_a_detector_on_a_stream_of_another_block_length_fails_its_warm_up_naming_both():
    cfg = SessionConfig(sources=[SourceConfig(name="isi", uri="sim:isi?block=200&n=2")],
                        engines=[EngineConfig(name="bcjrnet-isi", source="isi")])
    with pytest.raises(SessionError) as e:
        Session(cfg).start()
    msg = str(e.value)
    assert "bcjrnet-isi" in msg and "block length 500" in msg and "(1, 200)" in msg and "\n" not in msg


def test_the_shipped_comms_session_runs_every_detector_at_10000_symbols_per_second():
    cfg = load_config("comms")
    assert {s.name for s in cfg.sources} == {"isi", "isi-drift"}
    s = run(cfg, seconds=2.5)
    st = s.status()
    for name, src in st.sources.items():
        assert src["nominal_hz"] * 500 == 10_000 and src["items"] >= 40, name
    for label, e in st.engines.items():
        assert e["state"] == "stopped" and e["skipped"] == 0, label
        assert e["results"] == st.sources[e["stream"]]["items"], label  # every block detected
        assert 0 <= e["ser_overall"] < 0.2, label
