"""Plug-and-play image restoration (seed Example 20): ADMM and HQS with a learned prior step.

Restore s from x = k * s + w (k a point-spread function, circular convolution, w ~ N(0, sigma^2);
k = delta for pure denoising) as the MAP rule (seed eq. (4)) 0.5 ||x - H s||^2 + phi(s). Both
solvers run `engines.imaging.admm.admm_step`, the one ADMM iteration of seed Algorithm 1:

    s_{k+1} = W1 x + W2 (v_k - u_k)                  the model-based step (data fidelity, via FFT)
    v_{k+1} = prox_{phi / (2 lambda_k)}(s_{k+1} + u_k)   the prior step (eq. (13); PnP: eq. (26))
    u_{k+1} = u_k + mu (s_{k+1} - v_{k+1})

The model-based step is the exact minimizer of 0.5 ||x - H s||^2 + lambda ||s - (v - u)||^2:
with H circular it is diagonal in the Fourier domain (`FourierDataStep`),

    F s = (conj(K) F x + 2 lambda F(v - u)) / (|K|^2 + 2 lambda),   K = F k,

i.e. W1 = (H'H + 2 lambda I)^-1 H' and W2 = 2 lambda (H'H + 2 lambda I)^-1 as in admm.py's eq. (20).
HQS (half-quadratic splitting) is the same iteration with mu = 0 (u stays 0): s from the data
step, v from the prior step, nothing else.

The prior step is pluggable (a `Prox`, (z, tau) -> prox_{tau phi}(z)):
- `DenoiserProx`: a trained denoiser h(z; alpha) with a noise-level input (engines/imaging/dncnn.py).
  For phi = sigma^2 R (R the image prior's negative log density) the prox at tau = 1 / (2 lambda)
  is the MAP denoiser of noise std alpha = sigma sqrt(tau) = sigma / sqrt(2 lambda): eq. (26) with
  alpha_k set by the penalty. The penalties follow a continuation lambda_k = sigma^2 / (2 alpha_k^2)
  with alpha_k geometric from `alpha0` down to sigma (Zhang et al., "Plug-and-play image
  restoration with deep denoiser prior", TPAMI 2021): large steps first, then fine ones. HQS weights
  its penalties by DPIR's trade-off c = 0.23 (`HQS_TRADEOFF`; ADMM's dual makes c = 1 work).
- `TVProx`: the model-based baseline phi = w TV(s) (isotropic total variation), prox by Chambolle's
  projection algorithm (J. Math. Imaging Vis. 2004), with fixed lambda: plain convex ADMM.

Images are (N, H, W) float on [0, 1]. The engines (`PnPEngine`) take live frames, scale each to
[0, 1] by its range (an I/Q ultrasound frame by its envelope), estimate sigma from the finest
diagonal wavelet band when it is not given (Donoho's MAD rule), restore, and scale back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from engines.base import EngineInfo, check_finite
from engines.errors import BackendUnavailable, EngineInputError
from engines.imaging.admm import AdmmLayer, AdmmState, Prox, admm_step

MAD_TO_SIGMA = 0.6745  # median |N(0, 1)|


def gaussian_psf(shape: tuple[int, int], sigma: float) -> Tensor:
    """A Gaussian point-spread function of `sigma` pixels, (H, W) float64, centred at pixel (0, 0)
    (wrapped, for circular convolution by FFT), summing to 1; sigma = 0 is the identity (a delta)."""
    H, W = shape
    if sigma < 0:
        raise ValueError(f"psf sigma must be >= 0, got {sigma}")
    k = torch.zeros(H, W, dtype=torch.float64)
    if sigma == 0:
        k[0, 0] = 1.0
        return k
    r = torch.fft.fftfreq(H, 1 / H, dtype=torch.float64)  # signed offsets 0, 1, ..., -1
    c = torch.fft.fftfreq(W, 1 / W, dtype=torch.float64)
    k = torch.exp(-0.5 * (r[:, None] ** 2 + c[None, :] ** 2) / sigma**2)
    return k / k.sum()


def blur(s: Tensor, psf: Tensor) -> Tensor:
    """H s: the circular convolution of each image s (N, H, W) with psf (H, W) (centred at (0, 0))."""
    return torch.fft.irfft2(torch.fft.rfft2(s) * torch.fft.rfft2(psf.to(s.dtype)), s=s.shape[-2:])


class FourierDataStep:
    """The model-based step of ADMM / HQS for a circular blur (module docstring): W1, W2 of eq. (20)
    as Fourier multipliers, for the PSF `psf` (H, W) and any penalty lambda."""

    def __init__(self, psf: Tensor) -> None:
        self.shape = tuple(psf.shape)
        self.K = torch.fft.rfft2(psf.to(torch.float64))
        self.K2 = self.K.abs() ** 2

    def W1(self, lam: float):
        """x -> (H'H + 2 lambda I)^-1 H' x."""
        gain = self.K.conj() / (self.K2 + 2 * lam)
        return lambda x: torch.fft.irfft2(torch.fft.rfft2(x) * gain.to(torch.fft.rfft2(x).dtype),
                                          s=self.shape)

    def W2(self, lam: float):
        """z -> 2 lambda (H'H + 2 lambda I)^-1 z."""
        gain = 2 * lam / (self.K2 + 2 * lam)
        return lambda z: torch.fft.irfft2(torch.fft.rfft2(z) * gain.to(z.dtype), s=self.shape)


@dataclass(frozen=True)
class DenoiserProx:
    """prox_{tau phi}(z) = h(z; sigma sqrt(tau)) for phi = sigma^2 R (module docstring); `denoiser` any
    module with `denoise(z (N, 1, H, W), alpha)`."""

    denoiser: nn.Module
    sigma: float
    tradeoff: float = 1.0  # c: penalties lambda_k = c sigma^2 / (2 alpha_k^2), so alpha = sigma sqrt(c tau)

    def __call__(self, z: Tensor, tau: Tensor | float) -> Tensor:
        alpha = self.sigma * math.sqrt(self.tradeoff * float(tau))
        return self.denoiser.denoise(z[:, None].float(), alpha)[:, 0].to(z.dtype)


def _grad(u: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences (Neumann boundary): (d/drow, d/dcol) of (N, H, W)."""
    gr = torch.zeros_like(u)
    gc = torch.zeros_like(u)
    gr[:, :-1] = u[:, 1:] - u[:, :-1]
    gc[:, :, :-1] = u[:, :, 1:] - u[:, :, :-1]
    return gr, gc


def _div(pr: Tensor, pc: Tensor) -> Tensor:
    """The divergence, minus the adjoint of `_grad`."""
    d = torch.zeros_like(pr)
    d[:, 0] = pr[:, 0]
    d[:, 1:-1] = pr[:, 1:-1] - pr[:, :-2]
    d[:, -1] = -pr[:, -2]
    d[:, :, 0] += pc[:, :, 0]
    d[:, :, 1:-1] += pc[:, :, 1:-1] - pc[:, :, :-2]
    d[:, :, -1] += -pc[:, :, -2]
    return d


@dataclass(frozen=True)
class TVProx:
    """prox_{tau phi}(z) for phi = weight TV(s) (isotropic): argmin_v 0.5 ||v - z||^2 + tau weight TV(v),
    by `n_iter` steps of Chambolle's projection algorithm (step 1/8)."""

    weight: float
    n_iter: int = 50

    def __call__(self, z: Tensor, tau: Tensor | float) -> Tensor:
        t = float(tau) * self.weight
        if t <= 0:
            return z
        pr, pc = torch.zeros_like(z), torch.zeros_like(z)
        for _ in range(self.n_iter):
            gr, gc = _grad(_div(pr, pc) - z / t)
            norm = 1 + 0.125 * torch.sqrt(gr**2 + gc**2)
            pr, pc = (pr + 0.125 * gr) / norm, (pc + 0.125 * gc) / norm
        return z - t * _div(pr, pc)


def continuation(sigma: float, alpha0: float, n_iter: int) -> list[float]:
    """lambda_k = sigma^2 / (2 alpha_k^2), alpha_k geometric from max(alpha0, sigma) to sigma over n_iter."""
    a0 = max(alpha0, sigma)
    alphas = np.geomspace(a0, sigma, n_iter) if n_iter > 1 else np.array([sigma])
    return [float(sigma**2 / (2 * a**2)) for a in alphas]


def restore(x: Tensor, psf: Tensor, prox: Prox, lams: list[float], mu: float) -> Tensor:
    """len(lams) iterations of `admm_step` (mu > 0: ADMM; mu = 0: HQS) from s_0 = v_0 = x, u_0 = 0, with the
    Fourier data step of `psf` and the prior step `prox`; returns v_K, the prior step's last output."""
    data = FourierDataStep(psf)
    state = AdmmState(s=x, v=x, u=torch.zeros_like(x))
    for lam in lams:
        state = admm_step(state, x, AdmmLayer(W1=data.W1(lam), W2=data.W2(lam), lam=lam, mu=mu, prox=prox))
    return state.v


@dataclass(frozen=True)
class Solver:
    """One restoration method: its prior step, penalty schedule and dual step (mu = 0: HQS)."""

    name: str
    family: str
    prox: Prox
    lams: list[float]
    mu: float

    def __call__(self, x: Tensor, psf: Tensor) -> Tensor:
        return restore(x, psf, self.prox, self.lams, self.mu)


# Defaults, chosen on the validation image of the dncnn recipe (skimage 'coins', sigma = 25/255), never on the
# held-out one. TV: weight 0.5, 1, 1.5, 2 x sigma gave 26.7, 27.2, 26.3, 25.6 dB (40 iterations,
# lam = 3 sigma). PnP with the shipped dncnn (alone: 27.95 dB), PnP-ADMM / PnP-HQS at (alpha0, iterations):
# (0.1, 8) 27.96 / 26.48, (0.2, 16) 27.95 / 26.42, (0.3, 16) 27.88 / 26.40, (0.3, 8) 27.21 / 26.32 dB.
# Deblurring validation scenes (sim:smlm / sim:ceus seed 99): (0.1, 8) within 0.13 dB of the best of 4.
PNP_ITER, PNP_ALPHA0 = 8, 0.1
# HQS has no dual to undo the bias of an MMSE denoiser in the prior step: with the prox-consistent
# penalties (c = 1) its last step denoises s = (x + v) / 2 at alpha = sigma and oversmooths (coins: 26.48 dB,
# below TV). DPIR's trade-off (Zhang et al. 2021, their lambda = 0.23) weights the data step by c = 0.23:
# coins 27.64 dB; deblurring validation scenes +0.5 dB over c = 1.
HQS_TRADEOFF = 0.23
TV_ITER, TV_WEIGHT_PER_SIGMA, TV_LAM_PER_SIGMA = 40, 1.0, 3.0


def pnp_admm(denoiser: nn.Module, sigma: float, n_iter: int = PNP_ITER,
             alpha0: float = PNP_ALPHA0) -> Solver:
    """PnP-ADMM (seed eq. (26)): the denoiser as the prior step, lambda_k by `continuation`, mu = 1."""
    return Solver("pnp-admm", "dnn-aided", DenoiserProx(denoiser, sigma), continuation(sigma, alpha0, n_iter),
                  1.0)


def pnp_hqs(denoiser: nn.Module, sigma: float, n_iter: int = PNP_ITER, alpha0: float = PNP_ALPHA0,
            tradeoff: float = HQS_TRADEOFF) -> Solver:
    """PnP-HQS: the same iteration with mu = 0; lambda_k = c sigma^2 / (2 alpha_k^2), c = `tradeoff`."""
    lams = [tradeoff * lam for lam in continuation(sigma, alpha0, n_iter)]
    return Solver("pnp-hqs", "dnn-aided", DenoiserProx(denoiser, sigma, tradeoff), lams, 0.0)


def tv_admm(sigma: float, weight: float | None = None, n_iter: int = TV_ITER,
            lam: float | None = None) -> Solver:
    """TV-ADMM: phi = weight TV (default TV_WEIGHT_PER_SIGMA sigma), fixed lambda (default
    TV_LAM_PER_SIGMA sigma), mu = 1."""
    w = TV_WEIGHT_PER_SIGMA * sigma if weight is None else weight
    lam = TV_LAM_PER_SIGMA * max(sigma, 1e-3) if lam is None else lam
    return Solver("tv-admm", "model-based", TVProx(w), [lam] * n_iter, 1.0)


def estimate_sigma(image: np.ndarray) -> float:
    """Noise std of an (H, W) image by the MAD of its finest diagonal Haar band (Donoho & Johnstone)."""
    h, w = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    a = np.asarray(image[:h, :w], np.float64)
    d = (a[0::2, 0::2] - a[0::2, 1::2] - a[1::2, 0::2] + a[1::2, 1::2]) / 2
    return float(np.median(np.abs(d)) / MAD_TO_SIGMA)


class PnPEngine:
    """Engine: frames (N, 1, C, H, W) -> restored frames (N, 1, 1, H, W) in the input's units.

    C = 1 (intensity) or 2 (I/Q: the envelope sqrt(I^2 + Q^2) is restored). Each frame is scaled to
    [0, 1] by its min and max, restored by the solver with the PSF of `psf_sigma` pixels (0: denoising)
    and the noise std `sigma` (on that scale; None: estimated per frame), and scaled back. Window 1,
    any H x W, torch float32 without gradients.
    """

    def __init__(self, name: str, family: str, make_solver, psf_sigma: float, sigma: float | None,
                 n_params: int = 0) -> None:
        if psf_sigma < 0:
            raise ValueError(f"{name}: psf_sigma must be >= 0 pixels, got {psf_sigma}")
        if sigma is not None and not 0 < sigma < 1:
            raise ValueError(f"{name}: sigma must be in (0, 1) (noise std on the [0, 1] scale), got {sigma}")
        self.make_solver, self.psf_sigma, self.sigma = make_solver, float(psf_sigma), sigma
        self.info = EngineInfo(name=name, family=family, task="restoration", backend="torch", window=1,
                               in_shape=(1, -1, -1, -1), out_shape=(1, 1, -1, -1), n_params=n_params)
        self._psf: dict[tuple[int, int], Tensor] = {}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[2] not in (1, 2) or min(x.shape[-2:]) < 2:
            raise EngineInputError(f"{self.info.name}: expected frames (N, 1, C, H, W), C 1 or 2, H, W >= 2, "
                                   f"got shape {x.shape}")
        check_finite(self.info.name, x)
        frames = x[:, 0, 0] if x.shape[2] == 1 else np.hypot(x[:, 0, 0], x[:, 0, 1])
        out = np.empty((len(frames), 1, 1, *frames.shape[-2:]), np.float32)
        shape = frames.shape[-2:]
        if shape not in self._psf:
            self._psf[shape] = gaussian_psf(shape, self.psf_sigma)
        for i, f in enumerate(frames.astype(np.float64)):
            lo, span = f.min(), max(f.max() - f.min(), 1e-12)
            z = (f - lo) / span
            sigma = self.sigma or min(max(estimate_sigma(z), 1e-3), 0.5)
            with torch.no_grad():
                s = self.make_solver(sigma)(torch.from_numpy(z.astype(np.float32))[None], self._psf[shape])
            out[i, 0, 0] = s[0].numpy() * span + lo
        return out


def _denoiser(name: str):
    from engines.load import load

    engine = load(name, backend="torch")
    return engine.module


def _check_backend(name: str, backend: str) -> None:
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{name}: runs on torch only, not {backend!r}")


def build_pnp_admm(*, backend: str = "auto", denoiser: str = "dncnn", psf_sigma: float = 0.0,
                   sigma: float | None = None, n_iter: int = PNP_ITER,
                   alpha0: float = PNP_ALPHA0) -> PnPEngine:
    """engines.load("pnp-admm"): PnP-ADMM with the shipped denoiser `denoiser` as the prior step."""
    _check_backend("pnp-admm", backend)
    h = _denoiser(denoiser)
    return PnPEngine("pnp-admm", "dnn-aided", lambda sg: pnp_admm(h, sg, int(n_iter), float(alpha0)),
                     psf_sigma, sigma, sum(p.numel() for p in h.parameters()))


def build_pnp_hqs(*, backend: str = "auto", denoiser: str = "dncnn", psf_sigma: float = 0.0,
                  sigma: float | None = None, n_iter: int = PNP_ITER,
                  alpha0: float = PNP_ALPHA0) -> PnPEngine:
    """engines.load("pnp-hqs"): PnP-HQS with the shipped denoiser `denoiser` as the prior step."""
    _check_backend("pnp-hqs", backend)
    h = _denoiser(denoiser)
    return PnPEngine("pnp-hqs", "dnn-aided", lambda sg: pnp_hqs(h, sg, int(n_iter), float(alpha0)),
                     psf_sigma, sigma, sum(p.numel() for p in h.parameters()))


def build_tv_admm(*, backend: str = "auto", psf_sigma: float = 0.0, sigma: float | None = None,
                  n_iter: int = TV_ITER) -> PnPEngine:
    """engines.load("tv-admm"): the model-based baseline, ADMM with the TV prox."""
    _check_backend("tv-admm", backend)
    return PnPEngine("tv-admm", "model-based", lambda sg: tv_admm(sg, n_iter=int(n_iter)), psf_sigma, sigma)
