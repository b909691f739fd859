"""SPARCOM: sparse recovery in the correlation domain, solved by FISTA (Solomon et al.; seed Fig. 8).

Blinking emitters are uncorrelated in time, so the temporal variance of a stack of frames
is the emitters' own variances seen through the squared PSF: at camera pixel m,

    M[m] = var_t(f_t[m]) = sum_i var_t(N_i(t)) PSF(p_m - r_i)^2 + noise variance,

a blur by PSF^2 (for a Gaussian PSF of sigma, a Gaussian of sigma / sqrt 2) of the sparse
map x of emitter variances. SPARCOM recovers x on a grid u times finer than the camera's:

    min_x 0.5 ||g - A x||^2 + lam ||x||_1,   x >= 0                                     (1)

with the data g and the operator A both on the fine grid:

    g = U M / max(M)   the variance image normalized to peak 1, upsampled x u (bilinear,
                       fine pixel j centred at coarse coordinate (j + 0.5) / u - 0.5)
    A = G              convolution with a Gaussian of sigma_A (the full convolution: its output
                       reaches past the field, where the data are 0), where
                       sigma_A^2 = sigma^2 / 2 + p^2 / 12 + p^2 / 6: the squared PSF, the camera
                       pixel's integration (a box of width p: variance p^2 / 12, the binning)
                       and the bilinear interpolation U (a triangle of half-width p: p^2 / 6),
                       each a blur whose variances add (their convolution is near-Gaussian).

Why the fine-grid form and not ||M - B G x||^2 with B the binning to camera pixels: B'B
varies with the phase of a fine pixel in its camera pixel, so that model's gradient step is
no convolution; with the data and the binning's blur moved to the fine grid, A'A is one
(Gaussian) convolution, the step is exactly the convolutional step that LSPARCOM unfolds
(engines/imaging/lsparcom.py; the LSPARCOM paper writes SPARCOM's step in this form), and
the "coincides" property is a test instead of an approximation. The median subtraction of
the reference preprocessing is omitted: a per-pixel constant does not change the variance.

Scale: lam is relative, lam_abs = lam lam_max with lam_max = max(A'g), the smallest weight
for which x = 0 solves (1) (x >= 0): the solution does not depend on the data's scale (ADU,
gain, photons). The anchors' reference lam = 0.13 is in the reference code's units; in these,
0.13 keeps only the brightest structure: on validation stacks of sim:smlm (64 x 64, 350 frames,
seeds 5200; image correlation with the filaments, 25 nm blur, 100 iterations) lam = 0.13 gives
0.53 (0.5 emitters / um^2) and 0.66 (3 / um^2), 0.05 gives 0.66 / 0.84, 0.02 gives 0.70 / 0.88
and 0.005 gives 0.72 / 0.89 (measured): LAM = 0.02, at the knee, is the default.

Step mu = 1 / (1.001 ||A||^2), ||A|| by power iteration (engines.ops.spectral_norm)
on the 1-D Gaussian factor at REFERENCE_GRID fine pixels: the norm of a Toeplitz section grows
with its size, so that step holds for every patch and field up to that size (and, below the
1.001 margin, beyond), and patches and the whole field take the same one.

The ISTA family's one step (engines.imaging.ista, seed eq. (15)) with W1 g = mu A'g (computed
once per solve), W2 s = s - mu A'A s and the non-negative soft threshold at mu lam_abs; FISTA's
momentum on top (Beck & Teboulle). A = Ky s Kx' with dense Toeplitz factors (a separable
Gaussian), A'A = (Ky'Ky) s (Kx'Kx) precomputed: two matrix products per iteration. Because A
is the full convolution, A'g and A'A s are the "same"-size convolutions of g with k and of s
with k * k (zero boundary), exactly the two convolutions of an LSPARCOM fold.

Field or patches: `patch` = 0 solves the whole field; `patch` = P solves P x P camera-pixel
patches overlapping by P / 2 (the anchors' 16 x 16, 8-pixel overlap) in one batch, with the
field's normalization and lam_max, and keeps from each patch its central part (the parts
meet halfway between neighbouring patch centres). A patch sees zero outside itself, so the
two agree where the solution is local: where the data within the reach of the operator's
support around a patch's kept part lies inside that patch (tested).

Reference configuration (ANCHORS.md "LSPARCOM"): lam 0.13 (the reference code's units; LAM
here), 400 iterations, 16 x 16 patches with 8-pixel overlap; the seed's Fig. 8 compares LSPARCOM
with 100 iterations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.base import EngineInfo, check_finite
from engines.errors import BackendUnavailable, EngineInputError
from engines.imaging.ista import LIPSCHITZ_MARGIN, IstaFamily, IstaLayer
from engines.imaging.ulm import nonneg_soft_threshold
from engines.ops.operators import LinearOperator, MatrixOperator
from engines.ops.spectral import spectral_norm

UPSAMPLE = 4
LAM = 0.02  # relative to lam_max; tuned on sim:smlm validation stacks (module docstring)
ITERATIONS = 100  # the seed's Fig. 8 comparison; the anchors' reference runs 400
REFERENCE_ITERATIONS = 400
WINDOW = 350  # frames per stack (the anchors' 350 high-density frames)
PATCH = 16  # the anchors' patch, camera pixels; overlap PATCH // 2
PSF_SIGMA_NM = 0.21 * 660.0 / 1.4  # sim:smlm's default PSF (0.21 wavelength / NA)
PIXEL_NM = 100.0
TRUNCATE = 4.0  # Gaussian kernels reach 4 sigma (exp(-8) = 3e-4 of the peak)
REFERENCE_GRID = 512  # fine pixels per axis of the section whose norm sets the step


def correlation_sigma_px(psf_sigma_nm: float, pixel_nm: float, upsample: int) -> float:
    """sigma_A in fine pixels: sqrt(sigma^2 / 2 + p^2 / 12 + p^2 / 6) / (p / u) (module docstring)."""
    if not (psf_sigma_nm > 0 and pixel_nm > 0 and upsample >= 1):
        raise ValueError(f"need psf_sigma_nm > 0, pixel_nm > 0, upsample >= 1; got {psf_sigma_nm}, "
                         f"{pixel_nm}, {upsample}")
    return math.sqrt(psf_sigma_nm**2 / 2 + pixel_nm**2 / 4) / (pixel_nm / upsample)


def gaussian_axis(sigma_px: float, truncate: float = TRUNCATE) -> Tensor:
    """The 1-D factor (float64, odd length, sum 1) of the Gaussian kernel of `sigma_px` fine pixels."""
    half = max(1, math.ceil(truncate * sigma_px))
    a = torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (a / sigma_px) ** 2)
    return k / k.sum()


def temporal_variance(frames: Tensor) -> Tensor:
    """Per-pixel unbiased variance over time of frames (N, T, H, W) -> (N, H, W) (two passes)."""
    d = frames - frames.mean(dim=1, keepdim=True)
    return d.square().sum(dim=1) / (frames.shape[1] - 1)


def correlation_input(x: Tensor, upsample: int) -> Tensor:
    """The data g of (1): windows (N, T, 1, H, W) -> U M / max(M), (N, uH, uW) (module docstring)."""
    M = temporal_variance(x[:, :, 0])
    M = M / M.amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(M.dtype).tiny)
    return F.interpolate(M[:, None], scale_factor=upsample, mode="bilinear", align_corners=False)[:, 0]


class FullConvolution(LinearOperator):
    """A s = k * s, the full convolution: (N, h, w) -> (N, h + 2r, w + 2r) for a separable kernel
    k = k1 k1' of odd length 2r + 1 (float64 1-D factor k1), as dense Toeplitz factors A s = K s K'.

    Its output reaches r pixels past the field, where the data are taken as 0, so that A'A is
    the "same"-size convolution with k * k and A'g the one with k (zero boundary): SPARCOM's
    step is then exactly two convolutions (module docstring).
    """

    def __init__(self, k1: Tensor, shape: Sequence[int]) -> None:
        super().__init__()
        h, w = (int(v) for v in shape)
        r = len(k1) // 2
        self.r, self.in_shape, self.out_shape = r, (h, w), (h + 2 * r, w + 2 * r)
        self.register_buffer("Ky", self._toeplitz(k1, h), persistent=False)
        self.register_buffer("Kx", self._toeplitz(k1, w), persistent=False)

    @staticmethod
    def _toeplitz(k1: Tensor, n: int) -> Tensor:
        """K (n + 2r, n), K[m, i] = k1[m - i]: column i is k1 placed at rows i..i + 2r."""
        a = torch.arange(n + len(k1) - 1)[:, None] - torch.arange(n)[None, :]
        inside = (a >= 0) & (a < len(k1))
        return torch.where(inside, k1.float()[a.clamp(0, len(k1) - 1)], torch.zeros(()))

    def forward(self, s: Tensor) -> Tensor:
        return self.Ky @ s @ self.Kx.mT

    def adjoint(self, x: Tensor) -> Tensor:
        return self.Ky.mT @ x @ self.Kx

    def adjoint_field(self, g: Tensor) -> Tensor:
        """A'g for data g (N, h, w) on the field (0 outside): the "same" convolution with k."""
        r = self.r
        return self.Ky[r:-r or None].mT @ g @ self.Kx[r:-r or None]


def step_size(k1: Tensor, grid: int = REFERENCE_GRID) -> float:
    """mu = 1 / (1.001 ||A||^2), ||A|| = ||A_1||^2 for the separable A = A_1 (x) A_1 with A_1 the
    1-D full convolution of a `grid`-pixel section (power iteration; module docstring)."""
    A1 = FullConvolution._toeplitz(k1, grid).double()
    return 1.0 / (LIPSCHITZ_MARGIN * spectral_norm(MatrixOperator(A1)) ** 4)


class SparcomFista(IstaFamily):
    """FISTA (or ISTA, momentum=False) on problem (1) for fine-grid images of `shape` (h, w).

    forward(g (N, h, w), theta (N,) or None) -> x (N, h, w): `n_iter` steps of
    s_{k+1} = relu(W1 g + W2 s_k - theta), W1 g = mu A'g, W2 s = s - mu A'A s, from s_0 = 0;
    theta = mu lam lam_max, lam_max = max(A'g) per image unless given (patches take the field's).
    `return_all` gives every iterate (the LSPARCOM coincidence test).
    """

    def __init__(self, shape: Sequence[int], sigma_px: float, n_iter: int = ITERATIONS, lam: float = LAM,
                 momentum: bool = True, mu: float | None = None) -> None:
        k = gaussian_axis(sigma_px)
        super().__init__(FullConvolution(k, shape), n_iter, momentum)
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        self.kernel_1d, self.lam = k, float(lam)
        self.mu = step_size(k) if mu is None else float(mu)
        A = self.H
        self.register_buffer("AtAy", A.Ky.mT @ A.Ky, persistent=False)  # A'A = (Ky'Ky) s (Kx'Kx)
        self.register_buffer("AtAx", A.Kx.mT @ A.Kx, persistent=False)

    def kernel(self) -> Tensor:
        """The 2-D kernel of A (float64): the outer product of the 1-D Gaussian factors."""
        return self.kernel_1d[:, None] * self.kernel_1d[None, :]

    def AtA(self, s: Tensor) -> Tensor:
        return self.AtAy @ s @ self.AtAx.mT

    def data_term(self, g: Tensor) -> Tensor:
        """W1 g = mu A'g (N, h, w)."""
        return self.mu * self.H.adjoint_field(g)

    def forward(self, g: Tensor, theta: Tensor | None = None,
                return_all: bool = False) -> Tensor | list[Tensor]:
        self._W1g = self.data_term(g)
        if theta is None:
            theta = self.lam * self._W1g.amax(dim=(1, 2))  # mu lam lam_max = lam max(mu A'g)
        self._theta = theta.reshape(-1, 1, 1)
        return super().forward(g, return_all=return_all)

    def layer(self, k: int) -> IstaLayer:
        return IstaLayer(W1=lambda g: self._W1g, W2=lambda s: s - self.mu * self.AtA(s), theta=self._theta,
                         shrink=nonneg_soft_threshold)


def patch_starts(n: int, patch: int) -> list[int]:
    """Starts of `patch`-long windows overlapping by patch // 2 that cover 0..n (the last ends at n)."""
    if n < patch:
        raise ValueError(f"the field ({n} pixels) is smaller than the patch ({patch})")
    hop = patch // 2
    starts = list(range(0, n - patch + 1, hop))
    if starts[-1] + patch < n:
        starts.append(n - patch)
    return starts


def _cuts(starts: list[int], patch: int, n: int) -> list[int]:
    """Boundaries of the parts kept from each patch: halfway between neighbouring patch centres."""
    return [0, *((a + b + patch) // 2 for a, b in zip(starts, starts[1:], strict=False)), n]


class Sparcom(nn.Module):
    """The whole SPARCOM decision: windows (N, T, 1, H, W) of camera frames -> (N, 1, 1, uH, uW).

    correlation_input (variance, normalization, x u) then SparcomFista on the field or on
    patches (module docstring); a solver per fine-grid shape is built on first use.
    """

    def __init__(self, n_iter: int = ITERATIONS, lam: float = LAM, upsample: int = UPSAMPLE, patch: int = 0,
                 psf_sigma_nm: float = PSF_SIGMA_NM, pixel_nm: float = PIXEL_NM,
                 momentum: bool = True) -> None:
        super().__init__()
        if n_iter < 1 or patch < 0 or (patch and patch < 2):
            raise ValueError(f"need n_iter >= 1 and patch 0 (whole field) or >= 2; got {n_iter}, {patch}")
        self.n_iter, self.lam, self.upsample, self.patch = int(n_iter), float(lam), int(upsample), int(patch)
        self.momentum = momentum
        self.sigma_px = correlation_sigma_px(psf_sigma_nm, pixel_nm, self.upsample)
        self.mu = step_size(gaussian_axis(self.sigma_px))
        self._solvers: dict[tuple[int, int], SparcomFista] = {}

    def solver(self, shape: tuple[int, int]) -> SparcomFista:
        """The FISTA solver of fine-grid images of `shape` (cached)."""
        if shape not in self._solvers:
            self._solvers[shape] = SparcomFista(shape, self.sigma_px, self.n_iter, self.lam, self.momentum,
                                                mu=self.mu)
        return self._solvers[shape]

    def solve(self, g: Tensor) -> Tensor:
        """x (N, uH, uW) for the data g (N, uH, uW), on the whole field or on patches."""
        h, w = g.shape[-2:]
        whole = self.solver((h, w))
        if not self.patch:
            return whole(g)
        theta = self.lam * whole.data_term(g).amax(dim=(1, 2))  # the field's lam_max
        u, P = self.upsample, self.patch * self.upsample
        rows, cols = (patch_starts(n // u, self.patch) for n in (h, w))
        rows, cols = [r * u for r in rows], [c * u for c in cols]
        N = g.shape[0]
        tiles = torch.stack([g[:, r:r + P, c:c + P] for r in rows for c in cols], dim=1)  # (N, n, P, P)
        x = self.solver((P, P))(tiles.reshape(-1, P, P), theta.repeat_interleave(len(rows) * len(cols)))
        x = x.reshape(N, len(rows), len(cols), P, P)
        out = g.new_empty(g.shape)
        rcut, ccut = _cuts(rows, P, h), _cuts(cols, P, w)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                out[:, rcut[i]:rcut[i + 1], ccut[j]:ccut[j + 1]] = \
                    x[:, i, j, rcut[i] - r:rcut[i + 1] - r, ccut[j] - c:ccut[j + 1] - c]
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.solve(correlation_input(x, self.upsample))[:, None, None]


class StackEngine:
    """Engine of a stack-level SR module: (N, T, 1, H, W) float32 frames (ADU) -> (N, 1, 1, uH, uW).

    T >= `window` (the newest `window` frames are used; fewer is an error), any H x W of at
    least `min_size` pixels; torch in float32 without gradients. Task "super-resolution":
    each result is the SR image of its window (a session sums them into its map).
    """

    def __init__(self, name: str, family: str, module: nn.Module, window: int, upsample: int,
                 min_size: int = 1) -> None:
        if window < 2:
            raise ValueError(f"window must be >= 2 frames (a variance), got {window}")
        self.module = module.eval().float()
        self.window, self.upsample, self.min_size = int(window), int(upsample), int(min_size)
        self.info = EngineInfo(name=name, family=family, task="super-resolution", backend="torch",
                               window=self.window, in_shape=(self.window, 1, -1, -1),
                               out_shape=(1, 1, -1, -1),
                               n_params=sum(p.numel() for p in module.parameters() if p.requires_grad))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = checked_stack(self.info.name, x, self.window, self.min_size)
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def checked_stack(name: str, x: np.ndarray, window: int, min_size: int = 1) -> np.ndarray:
    """The newest `window` frames of x (N, T, 1, H, W); EngineInputError naming the problem."""
    if x.ndim != 5 or x.shape[2] != 1:
        raise EngineInputError(f"{name}: expected (N, T, 1, H, W) frames, got shape {x.shape}")
    if x.shape[1] < window:
        raise EngineInputError(f"{name}: a stack of {x.shape[1]} frames is shorter than the window "
                               f"({window})")
    if min(x.shape[-2:]) < min_size:
        raise EngineInputError(f"{name}: frames of {x.shape[-2]} x {x.shape[-1]} pixels are smaller than "
                               f"{min_size} x {min_size}")
    x = x[:, -window:]
    check_finite(name, x)
    return x


def build_sparcom(*, backend: str = "auto", iterations: int = ITERATIONS, lam: float = LAM,
                  upsample: int = UPSAMPLE, window: int = WINDOW, patch: int = 0,
                  psf_sigma_nm: float = PSF_SIGMA_NM, pixel_nm: float = PIXEL_NM) -> StackEngine:
    """engines.load("sparcom", ...): FISTA on problem (1), torch only.

    `patch` 0 solves the whole field, 16 the anchors' 16 x 16 patches with 8-pixel overlap;
    `psf_sigma_nm`, `pixel_nm` the microscope (a source's meta fills them in a session).
    """
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"sparcom: runs on torch only, not {backend!r}")
    module = Sparcom(int(iterations), float(lam), int(upsample), int(patch), float(psf_sigma_nm),
                     float(pixel_nm))
    return StackEngine("sparcom", "model-based", module, int(window), int(upsample),
                       min_size=max(1, int(patch)))
