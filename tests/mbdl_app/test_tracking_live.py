"""Trackers live: a trained KalmanNet artifact beside the EKF on sim:lorenz, every estimate recorded;
glitches in the stream are gated, not fatal."""

from __future__ import annotations

import numpy as np
from rich.console import Console

import engines
from drivers import open_source
from drivers.recording import RecordingReader, RecordingWriter
from engines.load import load_artifact, register
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session import Session
from mbdl_app.session.report import final_tables
from mbdl_app.training.recipes import get_recipe


def test_kalmannet_artifact_and_ekf_run_live_and_record_every_estimate(tmp_path):
    folder = get_recipe("kalmannet-lorenz").run(tmp_path / "art", quick=True, quiet=True)
    register("kalmannet-live-test", lambda *, backend="auto": load_artifact(folder, backend))
    cfg = SessionConfig(sources=[SourceConfig(name="lorenz", uri="sim:lorenz?seed=3&rate=200&r2=1&n=150")],
                        engines=[EngineConfig(name="kalmannet-live-test", source="lorenz"),
                                 EngineConfig(name="ekf", source="lorenz")])
    path = tmp_path / "live.h5"
    s = Session(cfg, record=path)
    s.start()
    s.run(5.0)
    s.stop()
    st = s.status()
    assert st.sources["lorenz"]["items"] == 150
    with RecordingReader(path) as rec:
        for engine in ("kalmannet-live-test", "ekf"):
            assert st.engines[engine]["results"] == 150
            assert len(rec.result_arrays("lorenz", engine)["index"]) == 150
    assert np.isfinite(st.engines["kalmannet-live-test"]["mse_db_overall"])


def test_a_live_session_goes_on_through_an_outlier_and_a_missing_reading_and_counts_them(tmp_path):
    with open_source("sim:lorenz?seed=3&r2=1&rate=0&n=300") as src:
        info, samples = src.info, [src.read() for _ in range(300)]
    clean_y = np.array([x.value for x in samples])
    truth = np.array([x.truth["state"] for x in samples])
    samples[100].value = np.full(3, 1e30)  # a glitching sensor ...
    samples[180].value = np.array([1.0, np.nan, 2.0])  # ... and a lost reading
    path = tmp_path / "glitches.h5"
    with RecordingWriter(path, {"lorenz": info}) as w:
        w.append_items("lorenz", samples)
    kalmannet = EngineConfig(name="kalmannet-lorenz", backend="onnxruntime", source="lorenz")
    cfg = SessionConfig(sources=[SourceConfig(name="lorenz", uri=f"replay:{path}?speed=20")],
                        engines=[EngineConfig(name="ekf", source="lorenz"), kalmannet])
    s = Session(cfg)
    s.start()
    s.run(10.0)
    s.stop()
    for name, params in (("ekf", info.meta["model"]), ("kalmannet-lorenz", {"backend": "onnxruntime"})):
        st = s.status().engines[name]
        assert st["state"] != "failed", st["error"]
        assert st["results"] == 300 and st["gated"] == 2
        tracker = engines.load(name, **params)  # the same data without the glitches, offline
        tracker.reset(1)
        clean = np.array([tracker.step(y[None]).mean[0] for y in clean_y])
        clean_db = 10 * np.log10(np.mean((clean - truth) ** 2))
        assert abs(st["mse_db_overall"] - clean_db) < 0.5  # still tracking as well as without them
    console = Console(record=True, width=200)
    final_tables(s.status(), console)
    lines = console.export_text().replace("┃", "│").splitlines()  # header cells are bold-ruled
    rows = [[c.strip() for c in ln.split("│")[1:-1]] for ln in lines if "│" in ln]
    header = next(r for r in rows if r[:1] == ["engine"])
    assert {r[0]: r[header.index("gated")] for r in rows if r[0] in ("ekf", "kalmannet-lorenz")} == {
        "ekf": "2", "kalmannet-lorenz": "2"}  # the final table says so
