"""Every model-based tracker in a live headless session (`mbdl run`), recording every estimate.

The session builds each filter from the source's meta["model"] (sampling-mismatch data:
q2 is None, so the filters pick their own Q), runs it on its own thread and records each
estimate; offline, the same filters on the recorded observations give the same numbers.
"""

from __future__ import annotations

import subprocess
import sys

import h5py
import numpy as np
import pytest

import engines
from drivers import open_source
from engines.load import accepted_params

URI = "sim:lorenz?decimate=2000&q2=0&rate=100&n=150&seed=5"
TRACKERS = ("ekf", "ukf", "pf", "kf")


@pytest.mark.slow
def test_mbdl_run_with_every_model_based_tracker_records_every_estimate(tmp_path):
    out = tmp_path / "live.h5"
    args = ["run", "--source", URI, "--duration", "30", "--record", str(out), "--quiet"]
    for name in TRACKERS:
        args += ["--engine", name]
    proc = subprocess.run([sys.executable, "-m", "mbdl_app.cli", *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    with open_source(URI) as src:
        model = src.info.meta["model"]
    with h5py.File(out, "r") as f:
        y = f["streams/lorenz/data"][:]
        assert y.shape == (150, 3)
        for name in TRACKERS:
            res = f[f"results/lorenz/{name}"]
            np.testing.assert_array_equal(res["index"][:], np.arange(150))  # none skipped or lost
            tracker = engines.load(name, **{k: v for k, v in model.items() if k in accepted_params(name)})
            tracker.reset(1)
            offline = np.stack([tracker.step(y[t : t + 1]).mean[0] for t in range(150)])
            assert res["data"].dtype == np.float32  # the recording's result dtype
            np.testing.assert_array_equal(res["data"][:], offline.astype(np.float32))
            assert res["cov"].shape == (150, 3, 3)
