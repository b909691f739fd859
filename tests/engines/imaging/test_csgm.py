"""Deep generative prior (seed Example 21): the VAE and its loss, CSGM's latent search with restarts, and
the shipped vae-digits decoder beating the tuned Lasso at m = n/8 Gaussian measurements on held-out
digits."""

import numpy as np
import pytest
import torch

import engines
from engines.errors import EngineInputError
from engines.imaging.csgm import VAE, csgm, vae_loss


def test_vae_loss_is_the_negative_elbo_and_eval_decodes_the_mean():
    vae = VAE(n=6, latent=2, hidden=5).eval()
    s = torch.rand(4, 6)
    g, mu, logvar = vae(s)
    torch.testing.assert_close(g, vae.decoder(mu))
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    bce = torch.nn.functional.binary_cross_entropy(g, s, reduction="none").sum(-1)
    torch.testing.assert_close(vae_loss((g, mu, logvar), s), (bce + kl).mean())


def test_csgm_recovers_a_signal_in_the_range_of_the_generator():
    torch.manual_seed(0)
    G = VAE(n=20, latent=2, hidden=16).decoder
    z_true = torch.tensor([[0.5, -0.3]])
    with torch.no_grad():
        s = G(z_true)
    H = torch.randn(8, 20, generator=torch.Generator().manual_seed(1)) / 8**0.5
    s_hat = csgm(G, H, s @ H.T, latent=2, lam=1e-4, restarts=3, steps=300)
    assert float(((s_hat - s) ** 2).mean()) < 1e-3


def test_csgm_bad_shapes_are_an_error():
    G = VAE(n=4, latent=2, hidden=3).decoder
    with pytest.raises(ValueError, match="must agree"):
        csgm(G, torch.zeros(3, 4), torch.zeros(1, 2), latent=2)


def test_shipped_decoder_engine_and_its_onnx_graph():
    pytest.importorskip("onnxruntime")
    z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    ref = engines.load("vae-digits", backend="torch")(z)
    assert ref.shape == (5, 64) and ((ref >= 0) & (ref <= 1)).all()
    np.testing.assert_allclose(engines.load("vae-digits", backend="onnxruntime")(z), ref, atol=1e-5)
    with pytest.raises(EngineInputError, match="vae-digits"):
        engines.load("vae-digits", backend="torch")(np.zeros((2, 3), np.float32))


def test_shipped_prior_beats_the_tuned_lasso_at_an_eighth_of_the_measurements():
    pytest.importorskip("sklearn")
    from mbdl_app.training.recipes.vae_digits import Size, compare
    from mbdl_app.training.shipped_data import digits_split

    torch.set_num_threads(1)
    G = engines.load("vae-digits", backend="torch").module
    r = compare(G, 8, digits_split(), 8, Size(ms=(8,), test=12, val=6, restarts=3, steps=150))
    assert r["csgm_mse"] < r["lasso_mse"], r
