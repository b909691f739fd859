"""`mbdl reproduce fig7 --quick`: the ULM maps and resolution metrics, written as CSV, JSON, PNG."""

import csv
import json

import numpy as np

from mbdl_app.cli import main
from mbdl_app.experiments.fig7 import in_vessel_fraction


def test_quick_fig7_writes_metrics_for_every_method(tmp_path):
    try:
        main(["reproduce", "fig7", "--quick", "--out", str(tmp_path), "--lista", str(tmp_path / "none")])
    except SystemExit as e:
        assert e.code in (0, None)
    out = tmp_path / "fig7"
    rows = {r["method"]: r for r in csv.DictReader(open(out / "fig7.csv"))}
    assert rows["ulm-lista"]["status"].startswith("not trained")
    for name in ("ulm-fista", "coarse"):
        assert 0.0 <= float(rows[name]["jaccard"]) <= 1.0
    assert 0.0 <= float(rows["diffraction-limited accumulation"]["map_in_vessel_fraction"]) <= 1.0
    result = json.loads((out / "fig7.json").read_text())
    assert result["setup"]["true_bubbles_in_test"] > 0
    assert (out / "fig7.png").stat().st_size > 1000


def test_in_vessel_fraction_counts_intensity_near_the_lumens():
    vessels = np.zeros((40, 40))
    vessels[20, :] = 1
    image = np.zeros((40, 40))
    image[21, 5] = 3.0  # one fine pixel off the lumen: within the tolerance
    image[35, 5] = 1.0  # far off
    assert in_vessel_fraction(image, vessels) == 0.75


def test_a_separator_runs_on_consecutive_blocks_as_a_live_session_does():
    import torch

    from mbdl_app.experiments.fig7 import separated

    calls = []

    def separator(x):  # (1, T, 2, h, w) -> its frames (an identity separator), recording each block
        calls.append(x.shape[1])
        return x * 2.0

    D = torch.randn(45, 2, 3, 4)
    S = separated(separator, D, window=20)
    assert S.shape == (45, 1, 2, 3, 4) and torch.equal(S[:, 0], 2.0 * D)
    assert calls == [20, 20, 20]  # blocks 0-19, 20-39, and 25-44 for the last 5 frames


def test_a_sliding_separator_keeps_each_windows_centre_frame_its_s_or_its_residual():
    import torch

    from drivers.sim.ceus import CeusParams, CeusSimulator
    from engines.imaging.clutter import separated_sliding
    from mbdl_app.experiments.fig7 import load_module

    corona = load_module("corona-ceus")  # the shipped CORONA, pair_output gives (L, S)
    D = torch.from_numpy(CeusSimulator(CeusParams(height=16, width=16, seed=5)).frames(26)["data"])
    S = separated_sliding(corona, D, n=16)
    R = separated_sliding(corona, D, n=16, residual=True)
    assert S.shape == R.shape == (16, 1, 2, 16, 16) and corona.pair_output is False
    with torch.no_grad():
        for t, a in ((12, 3), (0, 0), (15, 6)):  # frame t from the window a .. a + 19: t - 9, clamped to 0
            S_w = corona(D[a:a + 20][None])[0]
            corona.pair_output = True
            L_w = corona(D[a:a + 20][None])[0, 0]
            corona.pair_output = False
            assert torch.allclose(S[t, 0], S_w[t - a], atol=1e-5)
            assert torch.allclose(R[t, 0], D[t] - L_w[t - a], atol=1e-5)
    # the residual keeps the bubbles unshrunk: more energy than CORONA's shrunk S
    assert float(R.square().sum()) > float(S.square().sum())
