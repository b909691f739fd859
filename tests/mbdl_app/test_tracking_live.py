"""A trained KalmanNet artifact runs live beside the EKF on sim:lorenz, every estimate recorded."""

from __future__ import annotations

import numpy as np

from drivers.recording import RecordingReader
from engines.artifacts import load_artifact
from engines.load import register
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session import Session
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
