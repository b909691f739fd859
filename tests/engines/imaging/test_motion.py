"""Motion compensation in front of a clutter filter (engines/imaging/motion.py) and the shipped
corona-mc artifact that uses it (issue 15 part 1)."""

import numpy as np
import pytest

import engines
from drivers.sim.ceus import CeusParams, CeusSimulator
from engines.errors import EngineInputError
from engines.imaging.motion import MotionCompensated, align_window, estimate_shift, shift_frames, unshift
from engines.imaging.svd_filter import SVDFilter


def _tissue(seed=3, side=32):
    f = CeusSimulator(CeusParams(height=side, width=side, seed=seed)).frames(1)
    return f["tissue"][0, 0] + 1j * f["tissue"][0, 1]


def _iq(z):
    return np.stack([z.real, z.imag], axis=1).astype(np.float32)


@pytest.mark.parametrize("shift", [(0.3, -1.25), (2.05, 0.5), (-0.8, 2.9), (-3.0, 0.0)])
def test_a_known_sub_pixel_shift_is_found_to_a_twentieth_of_a_pixel(shift):
    z = _tissue()
    spectrum = np.fft.fft2(z)
    moved = shift_frames(spectrum[None], np.array([shift]))[0]
    # the shift that moves the original onto the moved frame
    np.testing.assert_allclose(estimate_shift(np.fft.fft2(moved), spectrum), shift, atol=0.05 + 1e-9)


def test_aligning_a_rigidly_moving_window_makes_it_static_and_unshift_undoes_it():
    z = _tissue()
    shifts = np.array([[0.4 * np.sin(t / 3), 1.5 * np.cos(t / 4)] for t in range(12)])
    window = _iq(shift_frames(np.fft.fft2(z)[None].repeat(12, 0), shifts))
    aligned, found = align_window(window, reference=5)
    assert found[5].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(found, shifts[5] - shifts, atol=0.05 + 1e-9)
    spread = np.abs(aligned - aligned[5]).max() / np.abs(window).max()
    assert spread < 0.05  # every frame on the reference, to the 1/20-pixel grid
    np.testing.assert_allclose(unshift(aligned, found), window, atol=1e-3 * np.abs(window).max())


def test_a_compensated_svd_filter_removes_moving_tissue_that_the_plain_one_leaves():
    z = _tissue()
    shifts = np.stack([np.linspace(-1.5, 1.5, 16), np.linspace(1.0, -1.0, 16)], axis=1)
    window = _iq(shift_frames(np.fft.fft2(z)[None].repeat(16, 0), shifts))[None]
    plain = SVDFilter(k=1, window=16, output="all")
    compensated = MotionCompensated(plain)
    assert compensated.info.name == "svd-filter+mc" and compensated.info.window == 16
    left_plain = np.abs(plain(window)).mean() / np.abs(window).mean()
    left_mc = np.abs(compensated(window)).mean() / np.abs(window).mean()
    assert left_plain > 0.2 and left_mc < 0.05  # rank 1 once registered
    with pytest.raises(EngineInputError, match=r"expected \(N, 16, 2, H, W\)"):
        compensated(window[:, :8])
    bad = window.copy()
    bad[0, 3, 0, 2, 2] = np.nan
    with pytest.raises(EngineInputError):
        compensated(bad)


def test_the_shipped_corona_mc_meets_the_chained_target_on_its_card_and_runs_alike_on_ort():
    torch_engine = engines.load("corona-mc", backend="torch")
    ort_engine = engines.load("corona-mc", backend="onnxruntime")
    assert torch_engine.info.name.endswith("+mc") and ort_engine.info.window == 60
    chained = torch_engine.card["metrics"]["fig7_chained"]
    assert chained["test_jaccard"] >= 0.55 and chained["test_rmse_um"] <= 35.0  # issue 15's target
    x = CeusSimulator(CeusParams(height=16, width=16, seed=8)).frames(60)["data"][None]
    out_torch, out_ort = torch_engine(x), ort_engine(x)
    assert out_torch.shape == x.shape
    np.testing.assert_allclose(out_ort, out_torch, atol=1e-3 * np.abs(out_torch).max())


def test_corona_residual_output_is_the_data_minus_its_tissue_estimate():
    import torch

    from engines.imaging.corona import CORONA

    x = torch.from_numpy(CeusSimulator(CeusParams(height=12, width=12, seed=2)).frames(20)["data"][None])
    net = CORONA(n_layers=3, output="residual")
    net.pair_output = True
    L, S = net(x)[0]
    net.pair_output = False
    torch.testing.assert_close(net(x)[0], x[0] - L)
    with pytest.raises(ValueError, match="output must be"):
        CORONA(output="bubbles")


@pytest.mark.parametrize(("hop", "lag"), [(1, 4), (3, 2), (8, 0)])
def test_centre_frames_publishes_each_frame_from_the_window_a_session_would(hop, lag):
    from engines.imaging.clutter import centre_frames

    f = SVDFilter(k=1, window=8, output="all")
    D = CeusSimulator(CeusParams(height=12, width=12, seed=4)).frames(30)["data"]
    out = centre_frames(f, D, 20, lag, hop)
    for t in range(20):
        # windows end at 7, 7 + hop, ...; the one ending at e publishes e - lag - hop + 1 .. e - lag
        ends = [e for e in range(7, 30, hop) if e - lag - hop + 1 <= t <= e - lag] or [7]
        a = ends[0] - 7
        np.testing.assert_allclose(out[t], f(D[a:a + 8][None])[0, t - a], atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        centre_frames(f, D, 20, lag=6, hop=3)
