"""Plug-and-play priors (seed Example 20): the FFT data step is ADMM's exact s-update, HQS is the same step
with mu = 0, the TV prox, the live engines' contract, and the shipped denoiser's gain over TV-ADMM on a
crop of the held-out image."""

import numpy as np
import pytest
import torch

import engines
import exported_models
from drivers.sim.ceus import CeusParams, CeusSimulator
from drivers.sim.smlm import SmlmParams, SmlmSimulator
from engines.errors import EngineInputError
from engines.imaging.admm import AdmmLayer, AdmmState, admm_step
from engines.imaging.pnp import (
    FourierDataStep,
    TVProx,
    blur,
    estimate_sigma,
    gaussian_psf,
    pnp_admm,
    pnp_hqs,
    tv_admm,
)

SHIPPED = exported_models.ROOT / "dncnn"


def _tv(v: torch.Tensor) -> float:
    dr, dc = torch.diff(v, dim=-2)[..., :, :-1], torch.diff(v, dim=-1)[..., :-1, :]
    return float(torch.sqrt(dr**2 + dc**2).sum())


def test_fourier_data_step_is_the_exact_s_update_of_admm_for_a_circular_blur():
    g = torch.Generator().manual_seed(0)
    shape, lam = (6, 5), 0.3
    psf = gaussian_psf(shape, 1.2)
    n = shape[0] * shape[1]
    H = blur(torch.eye(n, dtype=torch.float64).reshape(n, *shape), psf).reshape(n, n).T  # column j = H e_j
    x, z = torch.randn(1, *shape, generator=g, dtype=torch.float64), torch.randn(1, *shape, generator=g,
                                                                                 dtype=torch.float64)
    data = FourierDataStep(psf)
    s = data.W1(lam)(x) + data.W2(lam)(z)
    # argmin 0.5 ||x - H s||^2 + lam ||s - z||^2 = (H'H + 2 lam I)^-1 (H'x + 2 lam z)
    exact = torch.linalg.solve(H.T @ H + 2 * lam * torch.eye(n, dtype=torch.float64),
                               H.T @ x.flatten() + 2 * lam * z.flatten())
    torch.testing.assert_close(s.flatten(), exact, rtol=1e-9, atol=1e-9)


def test_hqs_is_the_admm_step_with_a_zero_dual_step():
    x = torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    data, prox = FourierDataStep(gaussian_psf((8, 8), 1.0)), TVProx(0.05)
    state = AdmmState(s=x, v=x, u=torch.zeros_like(x))
    layer = AdmmLayer(W1=data.W1(0.2), W2=data.W2(0.2), lam=0.2, mu=0.0, prox=prox)
    nxt = admm_step(state, x, layer)
    assert torch.equal(nxt.u, torch.zeros_like(x))  # the dual never moves: v = prox(W1 x + W2 v)
    torch.testing.assert_close(nxt.v, prox(data.W1(0.2)(x) + data.W2(0.2)(x), 1 / 0.4))


def test_tv_prox_keeps_a_constant_image_and_lowers_the_rof_objective_of_a_noisy_one():
    const = torch.full((1, 10, 12), 0.4, dtype=torch.float64)
    torch.testing.assert_close(TVProx(0.1)(const, 1.0), const)
    z = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    v = TVProx(0.1, n_iter=100)(z, 1.0)
    assert 0.5 * float(((v - z) ** 2).sum()) + 0.1 * _tv(v) < 0.1 * _tv(z)  # the ROF objective at v vs at z


def test_tv_admm_denoises_a_piecewise_constant_image():
    clean = torch.zeros(1, 32, 32, dtype=torch.float64)
    clean[:, 8:24, 8:24] = 0.8
    g = torch.Generator().manual_seed(3)
    x = clean + 0.1 * torch.randn(clean.shape, generator=g, dtype=torch.float64)
    s = tv_admm(0.1, n_iter=20)(x, gaussian_psf((32, 32), 0))
    assert float(((s - clean) ** 2).mean()) < 0.25 * float(((x - clean) ** 2).mean())


def test_noise_estimate_reads_the_std_of_white_noise():
    rng = np.random.default_rng(4)
    assert estimate_sigma(0.5 + 0.05 * rng.standard_normal((128, 128))) == pytest.approx(0.05, rel=0.1)


@pytest.mark.parametrize("name", ["pnp-admm", "pnp-hqs", "tv-admm"])
def test_engines_load_by_name_and_restore_microscopy_and_ultrasound_frames(name):
    engine = engines.load(name, n_iter=3, psf_sigma=1.0)
    assert engine.info.task == "restoration" and engine.info.window == 1
    smlm = SmlmSimulator(SmlmParams(size=24), seed=0)
    frames = np.stack([smlm.next_frame()[0] for _ in range(2)]).astype(np.float32)[:, None, None]
    y = engine(frames)
    assert y.shape == (2, 1, 1, 24, 24) and np.isfinite(y).all()
    assert abs(y.mean() - frames.mean()) < 0.05 * np.ptp(frames)  # in the input's units (ADU)
    iq = CeusSimulator(CeusParams(height=16, width=20), seed=0).frames(2)["data"][:, None]  # (2, 1, 2, H, W)
    assert engine(iq).shape == (2, 1, 1, 16, 20)


@pytest.mark.parametrize(("x", "problem"), [(np.zeros((1, 1, 3, 8, 8), np.float32), "C 1 or 2"),
                                            (np.zeros((8, 8), np.float32), "(N, 1, C, H, W)"),
                                            (np.full((1, 1, 1, 8, 8), np.nan, np.float32), "non-finite")])
def test_bad_input_is_a_one_line_error_naming_the_engine_and_the_problem(x, problem):
    engine = engines.load("tv-admm", n_iter=1)
    with pytest.raises(EngineInputError, match="tv-admm") as e:
        engine(x)
    assert problem in str(e.value) and "\n" not in str(e.value)


def test_bad_parameters_are_an_error_naming_the_parameter():
    with pytest.raises(engines.EngineError, match="psf_sigma"):
        engines.load("tv-admm", psf_sigma=-1.0)


def test_shipped_denoiser_in_pnp_beats_tv_admm_by_a_db_on_a_held_out_crop():
    pytest.importorskip("skimage", reason="the held-out image is scikit-image's: "
                        "pip install 'mbdl-studio[priors]'")
    from mbdl_app.training.recipes.dncnn import HELD_OUT, noisy, psnr
    from mbdl_app.training.shipped_data import skimage_gray

    torch.set_num_threads(1)
    h = engines.load("dncnn", backend="torch").module
    clean = skimage_gray(HELD_OUT)[96:224, 160:288]  # 128 x 128: the cameraman's head and coat
    sigma = 25 / 255
    x = torch.from_numpy(noisy(clean, sigma, 7))[None]
    psf = gaussian_psf(clean.shape, 0)
    with torch.no_grad():
        tv = psnr(tv_admm(sigma)(x, psf)[0].numpy(), clean)
        admm = psnr(pnp_admm(h, sigma)(x, psf)[0].numpy(), clean)
        hqs = psnr(pnp_hqs(h, sigma)(x, psf)[0].numpy(), clean)
    pnp = max(admm, hqs)
    assert pnp >= tv + 1.0, f"PnP {pnp:.2f} dB vs TV-ADMM {tv:.2f} dB"
