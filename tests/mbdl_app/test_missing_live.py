"""Missing observations live (issue 17, item 5): `sim:lorenz?missing=p` drops readings (NaN
values, truth kept); every tracker of a session predicts through them, the session counts
them (`gated`) and the recording's tracker results carry a `gated` column marking them."""

from __future__ import annotations

import numpy as np

from drivers import open_source
from drivers.recording import RecordingReader
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session import Session

URI = "sim:lorenz?seed=5&r2=1&rate=0&n=200&missing=0.2"


def test_the_source_drops_readings_but_keeps_the_truth():
    with open_source(URI) as src:
        samples = [src.read() for _ in range(200)]
    lost = np.array([not np.isfinite(s.value).any() for s in samples])
    assert 20 < lost.sum() < 60 and all(np.isfinite(s.truth["state"]).all() for s in samples)
    with open_source(URI) as src:  # the same seed drops the same readings
        again = np.array([not np.isfinite(src.read().value).any() for _ in range(200)])
    assert (again == lost).all()


def test_every_tracker_of_a_live_session_predicts_through_and_records_which_steps(tmp_path):
    path = tmp_path / "missing.h5"
    names = ("ekf", "kalmannet-lorenz")
    cfg = SessionConfig(sources=[SourceConfig(name="lorenz", uri=URI)],
                        engines=[EngineConfig(name=n, source="lorenz") for n in names])
    s = Session(cfg, record=path)
    s.start()
    s.run(10.0)
    s.stop()
    with RecordingReader(path) as rec:
        y = rec.arrays("lorenz")["data"]
        lost = ~np.isfinite(y).all(1)
        for name in names:
            st = s.status().engines[name]
            assert st["state"] != "failed", st["error"]
            assert st["results"] == 200 and st["gated"] >= lost.sum() > 0
            res = rec.result_arrays("lorenz", name)
            assert np.isfinite(res["data"]).all()
            gated = res["gated"].astype(bool)
            assert gated[lost[res["index"]]].all() and gated.sum() == st["gated"]
