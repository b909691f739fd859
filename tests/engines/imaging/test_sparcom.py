"""SPARCOM: the correlation data, the Gaussian operator and its step, FISTA on the whole field and
on patches, and the engine's contract (shapes, errors), on small synthetic stacks."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import engines
from engines.errors import EngineInputError
from engines.imaging.sparcom import (
    FullConvolution,
    Sparcom,
    SparcomFista,
    correlation_input,
    correlation_sigma_px,
    gaussian_axis,
    patch_starts,
    step_size,
    temporal_variance,
)
from engines.ops.spectral import spectral_norm


def blinking_stack(T=60, H=24, W=24, emitters=((8.3, 9.6), (15.2, 14.1)), sigma=1.0, seed=0):
    """(1, T, 1, H, W) ADU-like frames: Gaussian spots at (row, col) camera-pixel positions that blink
    independently, on an offset of 100 with Poisson-like noise, and the positions."""
    rng = np.random.default_rng(seed)
    r, c = np.mgrid[0:H, 0:W] + 0.5
    frames = np.full((T, H, W), 100.0)
    for y, x in emitters:
        on = rng.random(T) < 0.3
        frames += 500.0 * on[:, None, None] * np.exp(-((r - y) ** 2 + (c - x) ** 2) / (2 * sigma**2))
    frames += rng.normal(0, 2.0, frames.shape)
    return torch.from_numpy(frames.astype(np.float32))[None, :, None], np.array(emitters)


def test_temporal_variance_ignores_a_per_pixel_offset_and_gain_drops_out_of_the_correlation_data():
    x, _ = blinking_stack()
    v = temporal_variance(x[:, :, 0])
    torch.testing.assert_close(v, torch.var(x[:, :, 0], dim=1), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(temporal_variance(x[:, :, 0] + 7.0), v, rtol=1e-4, atol=1e-2)
    g = correlation_input(x, 4)
    assert g.shape == (1, 96, 96) and 0.8 < float(g.max()) <= 1.0  # M / max(M), interpolated between pixels
    torch.testing.assert_close(correlation_input(3.0 * x + 50.0, 4), g, rtol=1e-4, atol=1e-5)


def test_full_convolution_adjoint_and_its_normal_operator_is_the_same_size_convolution_with_k_star_k():
    k = gaussian_axis(1.3)
    A = FullConvolution(k, (20, 17))
    gen = torch.Generator().manual_seed(0)
    s, y = torch.randn(2, 20, 17, generator=gen), torch.randn(2, *A.out_shape, generator=gen)
    assert abs(float((A(s) * y).sum() - (s * A.adjoint(y)).sum())) < 1e-3  # <As, y> = <s, A'y>
    k2 = (k[:, None] * k[None, :]).float()
    kk = F.conv2d(F.pad(k2, [len(k) - 1] * 4)[None, None], k2[None, None])[0, 0]
    same = F.conv2d(s[:, None], kk[None, None], padding=len(k) - 1)[:, 0]
    torch.testing.assert_close(A.adjoint(A(s)), same, atol=1e-5, rtol=1e-4)
    g = torch.randn(2, 20, 17, generator=gen)
    same_k = F.conv2d(g[:, None], k2[None, None], padding=len(k) // 2)[:, 0]
    torch.testing.assert_close(A.adjoint_field(g), same_k, atol=1e-5, rtol=1e-4)


def test_step_bounds_the_operator_norm_of_any_smaller_grid():
    k = gaussian_axis(2.0)
    mu = step_size(k, grid=128)
    L = spectral_norm(FullConvolution(k, (48, 48)), max_iter=500) ** 2
    assert 0.95 < mu * L < 1.0  # a valid FISTA step (the norm grows with the grid), and not a timid one


def test_sigma_of_the_operator_adds_the_squared_psf_the_pixel_and_the_interpolation():
    # sigma^2 / 2 + p^2 / 12 + p^2 / 6 with sigma = 99 nm, p = 100 nm, in 25 nm fine pixels
    assert correlation_sigma_px(99.0, 100.0, 4) == pytest.approx(np.sqrt(99**2 / 2 + 100**2 / 4) / 25)


def test_fista_decreases_the_objective_and_keeps_the_solution_non_negative():
    x, _ = blinking_stack()
    g = correlation_input(x, 4)
    m = SparcomFista(g.shape[-2:], 3.0, n_iter=60, lam=0.1)

    def objective(s):
        r = torch.nn.functional.pad(g, [m.H.r] * 4) - m.H(s)
        lam_abs = m.lam * float(m.data_term(g).max()) / m.mu  # lam lam_max
        return 0.5 * float(r.square().sum()) + lam_abs * float(s.abs().sum())

    its = m(g, return_all=True)
    assert min(float(s.min()) for s in its) >= 0.0
    assert objective(its[60]) < objective(its[10]) < objective(its[1])


def test_sparcom_finds_blinking_emitters_closer_than_the_diffraction_limit():
    # two emitters 1.5 camera pixels (150 nm) apart with a 100 nm PSF: one blob in the mean frame
    x, positions = blinking_stack(T=200, H=16, W=16, emitters=((8.0, 7.25), (8.0, 8.75)))
    y = Sparcom(n_iter=400, lam=0.05, psf_sigma_nm=100.0, pixel_nm=100.0)(x)[0, 0, 0].numpy()
    row = y[28:36].sum(0)  # the fine rows around the emitters' row (8 x 4 = 32)
    peaks = [j for j in range(1, len(row) - 1) if row[j] >= row[j - 1] and row[j] > row[j + 1] and
             row[j] > 0.2 * row.max()]
    assert len(peaks) == 2
    np.testing.assert_allclose(sorted((np.array(peaks) + 0.5) / 4), positions[:, 1], atol=0.3)


def test_patches_tile_the_field_and_meet_halfway():
    assert patch_starts(64, 16) == [0, 8, 16, 24, 32, 40, 48]
    assert patch_starts(20, 16) == [0, 4]
    with pytest.raises(ValueError, match="smaller than the patch"):
        patch_starts(12, 16)


def test_patched_sparcom_equals_the_whole_field_where_the_solution_is_local():
    # one emitter pair in the middle of a 48 x 48 field, nothing else: every patch sees all of the data
    # it needs, and the others see none
    x, _ = blinking_stack(T=80, H=48, W=48, emitters=((24.0, 23.5), (25.0, 25.0)), sigma=0.8)
    whole = Sparcom(n_iter=50, psf_sigma_nm=80.0, pixel_nm=100.0)(x)
    patched = Sparcom(n_iter=50, patch=16, psf_sigma_nm=80.0, pixel_nm=100.0)(x)
    assert float(whole.max()) > 0
    torch.testing.assert_close(patched, whole, atol=1e-5 * float(whole.max()), rtol=1e-4)


def test_engine_contract_shapes_and_one_line_errors():
    e = engines.load("sparcom", iterations=5, window=20)
    assert e.info.family == "model-based" and e.info.window == 20 and e.info.task == "super-resolution"
    x, _ = blinking_stack(T=30, H=12, W=10)
    y = e(np.repeat(x.numpy(), 2, axis=0))
    assert y.shape == (2, 1, 1, 48, 40) and y.dtype == np.float32 and (y >= 0).all()
    with pytest.raises(EngineInputError, match="shorter than the window"):
        e(x.numpy()[:, :10])
    with pytest.raises(EngineInputError, match=r"\(N, T, 1, H, W\)"):
        e(x.numpy()[:, :, 0])
    bad = x.numpy().copy()
    bad[0, 25, 0, 3, 3] = np.nan
    with pytest.raises(EngineInputError, match="non-finite"):
        e(bad)
    with pytest.raises(EngineInputError, match="smaller than 16 x 16"):
        engines.load("sparcom", iterations=5, window=20, patch=16)(x.numpy())
