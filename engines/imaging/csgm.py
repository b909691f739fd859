"""Deep generative prior (seed Example 21, eq. (28)): compressed sensing with a VAE's decoder (CSGM).

Bora, Jalal, Price & Dimakis, "Compressed sensing using generative models", ICML 2017: with a
decoder G: R^k -> R^n trained to map Gaussian latents to the signal class, recover s from
x = H s + w (H (m, n), m < n) as

    z_hat = argmin_z ||x - H G(z)||^2 + lam ||z||^2,     s_hat = G(z_hat)         (seed eq. (28))

The objective is not convex in z, so it is minimized by Adam from `restarts` random starts
z_0 ~ N(0, I) and the start with the lowest objective wins (Bora et al.'s restarts); all
restarts of all signals run as one batch.

The VAE (Kingma & Welling 2014) is a small MLP, n -> hidden -> (mu, log var) in R^k and
k -> hidden -> hidden -> n with a sigmoid output (pixels on [0, 1]); trained on scikit-learn's
8 x 8 digits by `mbdl train vae-digits` with the negative ELBO (`vae_loss`: Bernoulli
cross-entropy + KL to N(0, I)). Only the decoder serves as the prior; the artifact's engine is
the decoder, a vector engine z (N, k) -> G(z) (N, n), and so is its ONNX graph.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.base import EngineInfo, check_finite
from engines.errors import BackendUnavailable, EngineInputError

N_PIXELS, LATENT, HIDDEN = 64, 8, 128
ARCH = {"n": N_PIXELS, "latent": LATENT, "hidden": HIDDEN}
LAMBDA = 0.1  # lam in eq. (28): the 0.1 ||z||^2


class Decoder(nn.Module):
    """G(z): (N, k) -> (N, n) on [0, 1]."""

    def __init__(self, n: int, latent: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n))

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.net(z))


class VAE(nn.Module):
    """forward(s (N, n) on [0, 1]) -> (G(z) (N, n), mu (N, k), log var (N, k)), z = mu + e^(logvar/2) eps
    in training, z = mu in eval."""

    def __init__(self, n: int = N_PIXELS, latent: int = LATENT, hidden: int = HIDDEN) -> None:
        super().__init__()
        if min(n, latent, hidden) < 1:
            raise ValueError(f"VAE sizes must be positive, got n={n}, latent={latent}, hidden={hidden}")
        self.encoder = nn.Sequential(nn.Linear(n, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = Decoder(n, latent, hidden)

    def forward(self, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encoder(s).chunk(2, dim=-1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(z), mu, logvar


def vae_loss(out: tuple[Tensor, Tensor, Tensor], s: Tensor) -> Tensor:
    """The negative ELBO per signal: sum of Bernoulli cross-entropies + KL(N(mu, var) || N(0, I))."""
    g, mu, logvar = out
    recon = F.binary_cross_entropy(g.clamp(1e-6, 1 - 1e-6), s, reduction="none").sum(-1)
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    return (recon + kl).mean()


def csgm(G: nn.Module, H: Tensor, x: Tensor, *, latent: int, lam: float = LAMBDA, restarts: int = 5,
         steps: int = 300, lr: float = 0.05, seed: int = 0) -> Tensor:
    """s_hat = G(z_hat) (N, n) for measurements x (N, m) of H (m, n): eq. (28) by Adam from `restarts`
    seeded Gaussian starts per signal, the start with the lowest final objective kept."""
    if x.ndim != 2 or H.ndim != 2 or x.shape[1] != H.shape[0]:
        raise ValueError(f"csgm: measurements (N, m) and H (m, n) must agree, got {tuple(x.shape)} and "
                         f"{tuple(H.shape)}")
    if restarts < 1 or steps < 1:
        raise ValueError(f"csgm: restarts and steps must be >= 1, got {restarts}, {steps}")
    N = x.shape[0]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(restarts * N, latent, generator=g).requires_grad_(True)
    xr = x.repeat(restarts, 1)  # row r N + i: restart r of signal i
    for p in G.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam([z], lr=lr)

    def objective() -> Tensor:  # (R N,) ||x - H G(z)||^2 + lam ||z||^2
        return ((xr - G(z) @ H.mT) ** 2).sum(-1) + lam * (z**2).sum(-1)

    for _ in range(steps):
        opt.zero_grad()
        objective().sum().backward()
        opt.step()
    with torch.no_grad():
        best = objective().reshape(restarts, N).argmin(0)
        s = G(z).reshape(restarts, N, -1)
        return s[best, torch.arange(N)]


class DecoderEngine:
    """Engine: latents z (N, k) float32 -> G(z) (N, n), the generative prior's decoder (torch, no grad)."""

    def __init__(self, name: str, module: Decoder, latent: int, n: int) -> None:
        self.module = module.eval().float()
        self.info = EngineInfo(name=name, family="black-box", task="generation", backend="torch", window=1,
                               in_shape=(latent,), out_shape=(n,),
                               n_params=sum(p.numel() for p in module.parameters()))

    def __call__(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z)
        if z.ndim != 2 or z.shape[1] != self.info.in_shape[0]:
            raise EngineInputError(f"{self.info.name}: expected latents (N, {self.info.in_shape[0]}), "
                                   f"got shape {z.shape}")
        check_finite(self.info.name, z)
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))).numpy()


def engine_from_artifact(art, *, backend: str = "auto") -> DecoderEngine:
    """The DecoderEngine of a verified VAE artifact: the card's `architecture.kwargs` rebuild the VAE,
    its state dict loads strictly (ArtifactError otherwise), its decoder is the engine's module."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: this loader runs torch only, not {backend!r}")
    kwargs = (art.card.get("architecture") or {}).get("kwargs", {})
    vae = art.build_module(lambda: VAE(**kwargs), "VAE")
    spec = {**ARCH, **kwargs}
    engine = DecoderEngine(art.card.get("name", art.path.name), vae.decoder, spec["latent"], spec["n"])
    engine.card = art.card
    return engine
