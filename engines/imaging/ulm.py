"""Ultrasound localization microscopy (ULM, seed Fig. 7): bubbles on an 8x finer grid, accumulated.

Each frame of separated bubbles S (complex I/Q, the output of CORONA or the truth) is a
super-resolution problem (seed Example 5, eq. (3)): its envelope x = |S| (h, w) is

    x = H s + w,    H = D_f (k * .)    (engines.ops.operators.BlurDownsample)

with s (f h, f w) the bubble intensities on a grid f = 8 times finer, k the system PSF on
that grid and D_f the keep-every-f-th-pixel downsampling. Sparse recovery of s, then its
peaks, give the bubbles' positions far below the PSF's width; summing the localizations of
many frames draws the vessels (the super-resolved map, `Accumulator`).

The ISTA family's one step (engines.imaging.ista), two points of the spectrum:

    ulm-fista   FISTA on min 0.5 ||x - H s||^2 + rho ||s||_1 with the PSF operator  (model-based)
    ulm-lista   ULMLista: K steps s_{k+1} = T_theta_k(W1_k x + W2_k s_k), W1_k an upsampling
                (bilinear x f) followed by a learned fine-grid convolution, W2_k a learned
                fine-grid convolution, theta_k learned, T the non-negative soft threshold
                (van Sloun et al., "Deep unfolded ULM", 2019: a convolutional LISTA)  (unfolded)

The fine grid follows the simulator's vessel map (drivers/sim/ceus.py `vessel_map`): fine
pixel j is centred at coarse coordinate (j + 0.5) / f - 0.5, which is what bilinear
upsampling with align_corners=False assumes; `psf_kernel` shifts the PSF by (f - 1) / 2 so
that BlurDownsample's coarse pixel i sits at fine coordinate f i + (f - 1) / 2 as well.

`SuperResolution` is the whole per-frame decision: envelope of the newest I/Q frame, scale,
solver, then `Localizer` (peaks of the Gaussian-smoothed intensity above a threshold, at most
one per (2 radius + 1)^2 fine neighbourhood), all in torch ops that export to ONNX. Its
output is the frame's localization image on the fine grid (1 at each localized bubble).
`ULMEngine` is the Engine adapter (task "super-resolution"); the session accumulates its
outputs (mbdl_app/session/maps.py), because an Engine is stateless.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.base import EngineInfo, Family, check_finite
from engines.errors import BackendUnavailable, EngineInputError
from engines.imaging.ista import FISTA, IstaFamily, IstaLayer
from engines.imaging.super_resolved_map import Accumulator  # noqa: F401 - ULM's map, numpy (no torch)
from engines.ops.operators import BlurDownsample
from engines.runtime.chunking import run_in_chunks

FACTOR = 8  # the fine grid is 8x finer in each direction (the seed's Fig. 7)
PSF_SIGMA_PX = (0.14 / 0.12, 0.32 / 0.12)  # sim:ceus default PSF sigma in coarse pixels (axial, lateral)
BUBBLE_AMP = 3.0  # sim:ceus mean bubble modulus: the envelope is divided by it (inputs ~ 1)
TRUNCATE = 3.0  # PSF kernels reach 3 sigma


def nonneg_soft_threshold(z: Tensor, theta: Tensor | float) -> Tensor:
    """max(z - theta, 0): the prox of theta ||s||_1 + the indicator of s >= 0 (intensities)."""
    return torch.relu(z - theta)


def psf_axes(sigma_px: Sequence[float], factor: int = FACTOR, truncate: float = TRUNCATE
             ) -> tuple[Tensor, Tensor]:
    """The axial and lateral factors (float64, odd sizes) of the peak-1 Gaussian PSF on the fine grid,
    shifted by (f - 1) / 2 fine pixels; the PSF kernel is their outer product.

    BlurDownsample keeps fine pixel f i as coarse pixel i; with this shift its output at coarse
    pixel i is the PSF centred at fine coordinate f i + (f - 1) / 2, the centre of coarse pixel i
    in the vessel-map convention (module docstring).
    """
    shift = (factor - 1) / 2
    axes = []
    for sigma in sigma_px:
        s = float(sigma) * factor
        half = math.ceil(truncate * s + shift)
        a = torch.arange(2 * half + 1, dtype=torch.float64)
        axes.append(torch.exp(-0.5 * ((a - half + shift) / s) ** 2))  # centred at a = half - shift
    return axes[0], axes[1]


def psf_kernel(sigma_px: Sequence[float], factor: int = FACTOR, truncate: float = TRUNCATE) -> Tensor:
    """The PSF kernel (kh, kw) of `psf_axes` (float64)."""
    ky, kx = psf_axes(sigma_px, factor, truncate)
    return ky[:, None] * kx[None, :]


class SeparableBlurDownsample(BlurDownsample):
    """BlurDownsample with a separable kernel k = ky kx', as two dense 1-D operators: H s = Ay s Ax'.

    The same operator (same zero boundary, centring and stride; tested against BlurDownsample):
    Ay (h, f h) and Ax (w, f w) hold the 1-D blur-and-keep-every-f-th maps, so H and H' are two
    matrix products each, which on a CPU are one to two orders of magnitude faster than a 2-D
    (transposed) convolution with a 65 x 137 kernel on the fine grid (measured).
    """

    def __init__(self, ky: Tensor, kx: Tensor, image_shape: tuple[int, int], factor: int) -> None:
        super().__init__(ky[:, None] * kx[None, :], image_shape, factor)
        self.register_buffer("Ay", self._axis_matrix(ky, self.out_shape[0], self.in_shape[0]))
        self.register_buffer("Ax", self._axis_matrix(kx, self.out_shape[1], self.in_shape[1]))

    def _axis_matrix(self, k: Tensor, n_out: int, n_in: int) -> Tensor:
        """A[i, p] = k[f i + len(k) // 2 - p]: Convolution2d's centred convolution, kept at f i."""
        a = self.factor * torch.arange(n_out)[:, None] + len(k) // 2 - torch.arange(n_in)[None, :]
        inside = (a >= 0) & (a < len(k))
        return torch.where(inside, k[a.clamp(0, len(k) - 1)], torch.zeros((), dtype=k.dtype))

    def forward(self, s: Tensor) -> Tensor:
        return self.Ay @ s @ self.Ax.mT  # D_f (k * s)

    def adjoint(self, x: Tensor) -> Tensor:
        return self.Ay.mT @ x @ self.Ax


def psf_operator(sigma_px: Sequence[float], shape: tuple[int, int], factor: int = FACTOR
                 ) -> SeparableBlurDownsample:
    """H = D_f (k * .): fine (f h, f w) -> coarse (h, w), the PSF of `psf_kernel` (float32)."""
    h, w = shape
    ky, kx = psf_axes(sigma_px, factor)
    return SeparableBlurDownsample(ky.float(), kx.float(), (h * factor, w * factor), factor)


def fine_coordinates(index: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """Coarse-pixel coordinates of fine-grid indices: (j + 0.5) / f - 0.5."""
    return (np.asarray(index, dtype=np.float64) + 0.5) / factor - 0.5


def fine_index(positions: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """The nearest fine-grid index (int) of coarse-pixel positions: round((p + 0.5) f - 0.5)."""
    return np.rint((np.asarray(positions, dtype=np.float64) + 0.5) * factor - 0.5).astype(np.int64)


def gaussian_blur_kernel(sigma: float) -> Tensor:
    """A peak-1 isotropic Gaussian (1, 1, k, k), k = 2 ceil(3 sigma) + 1 (the loss's and the
    localizer's smoothing: a delta becomes a bump of height 1)."""
    half = max(1, math.ceil(3 * sigma))
    a = torch.arange(-half, half + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (a / sigma) ** 2)
    return (g[:, None] * g[None, :])[None, None]


def smooth(s: Tensor, kernel: Tensor) -> Tensor:
    """s (N, H, W) convolved with a (1, 1, k, k) kernel, same size, zero boundary."""
    return F.conv2d(s[:, None], kernel, padding=kernel.shape[-1] // 2)[:, 0]


class Localizer(nn.Module):
    """Fine-grid intensity s (N, H, W) -> localizations (N, H, W): 1 where G * s has a local
    maximum (over a (2 radius + 1)^2 neighbourhood) above `threshold`, else 0.

    G is a peak-1 Gaussian of `sigma` fine pixels, so an isolated unit bubble gives a peak of
    ~1 whatever the solver's spread; the threshold is the fraction of that to accept (tuned
    per solver on validation frames by the fig7 experiment and the recipe).
    """

    def __init__(self, threshold: float = 0.5, sigma: float = 1.0, radius: int = 4) -> None:
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("kernel", gaussian_blur_kernel(sigma))
        self.radius = int(radius)

    def intensity(self, s: Tensor) -> Tensor:
        """G * s: the smoothed intensity whose peaks are the localizations."""
        return smooth(s, self.kernel)

    def forward(self, s: Tensor) -> Tensor:
        g = self.intensity(s)
        peak = F.max_pool2d(g[:, None], 2 * self.radius + 1, stride=1, padding=self.radius)[:, 0]
        return ((g >= peak) & (g > self.threshold)).to(s.dtype)


class ULMLista(IstaFamily):
    """Convolutional LISTA on the fine grid: s_{k+1} = T_theta_k(W1_k x + W2_k s_k), k < K.

    x (N, h, w) coarse envelopes -> s (N, f h, f w). W1_k x = c1_k * U x with U the bilinear
    x f upsampling (one convolution with K output channels computes all K terms at once);
    W2_k s = c2_k * s; kernels `kernel` = (rows, cols) (default 5 x 7: the PSF is ~2.3x wider
    laterally), theta_k > 0. Initialized as ISTA on the denoising model H = I (c1_k = g mu delta,
    c2_k = (1 - mu) delta, mu = 1/2, theta_k = g mu rho) with the gain g = 1 / (the PSF's area in
    fine pixels, 2 pi sigma_y sigma_x f^2), so that a bubble's initial output has about its
    mass instead of one per fine pixel of its blur (starting ~1,000x too bright, training first
    silences every unit of the shrinkage: measured). The PSF is learned, not given, which is
    the point of the unfolded network. `H` is the PSF operator of `shape` (the nominal patch),
    kept so that the network and FISTA share one model (IstaFamily); any h x w is accepted.
    """

    def __init__(self, n_layers: int = 8, factor: int = FACTOR, kernel: Sequence[int] = (5, 7),
                 rho: float = 0.1, sigma_px: Sequence[float] = PSF_SIGMA_PX, shape: Sequence[int] = (16, 16)
                 ) -> None:
        super().__init__(psf_operator(sigma_px, tuple(shape), factor), n_layers)
        kh, kw = (int(v) for v in kernel)
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(f"kernel sizes must be odd, got {tuple(kernel)}")
        self.factor, self.padding = int(factor), (kh // 2, kw // 2)
        mu, gain = 0.5, 1.0 / (2 * math.pi * sigma_px[0] * sigma_px[1] * factor**2)
        delta = torch.zeros(n_layers, 1, kh, kw)
        delta[:, 0, kh // 2, kw // 2] = 1.0
        # c1 and theta are stored divided by the gain: Adam's steps are about lr in absolute size,
        # so parameters of size ~1e-4 would be thrown around (every unit silenced in 20 steps: measured)
        self.gain = gain
        self.c1 = nn.Parameter(mu * delta)  # (K, 1, kh, kw): W1_k's convolutions / gain, one channel each
        self.c2 = nn.Parameter((1 - mu) * delta[:, None])  # (K, 1, 1, kh, kw)
        self.theta = nn.Parameter(torch.full((n_layers,), mu * rho))  # theta_k / gain

    def forward(self, x: Tensor, s0: Tensor | None = None, return_all: bool = False) -> Tensor | list[Tensor]:
        u = F.interpolate(x[:, None], scale_factor=self.factor, mode="bilinear", align_corners=False)
        self._W1x = F.conv2d(u, self.gain * self.c1, padding=self.padding)  # (N, K, fH, fW): W1_k x, all k
        s = self._W1x.new_zeros((x.shape[0], *self._W1x.shape[2:])) if s0 is None else s0
        return super().forward(x, s0=s, return_all=return_all)

    def layer(self, k: int) -> IstaLayer:
        c2 = self.c2[k]
        return IstaLayer(W1=lambda x: self._W1x[:, k],
                         W2=lambda s: F.conv2d(s[:, None], c2, padding=self.padding)[:, 0],
                         theta=self.gain * self.theta[k], shrink=nonneg_soft_threshold)


def schur_bound(kernel: Tensor, factor: int = FACTOR) -> float:
    """An upper bound on ||H||_2^2 for H = D_f (k * .) with k >= 0: ||H||_1 ||H||_inf (Schur test).

    A row of H (a coarse pixel) sums to sum(k); a column (a fine pixel) to the sum of the k
    entries of one phase of the stride, at most max over phases. For a smooth PSF the bound is
    within rounding of ||H||^2 (the top singular vector is nearly constant), and it costs no
    power iteration over a 65 x 137 kernel on a fine grid.
    """
    k = kernel.to(torch.float64)
    phases = max(float(k[a::factor, b::factor].sum()) for a in range(factor) for b in range(factor))
    return float(k.sum()) * phases


class ULMFista(FISTA):
    """FISTA on the PSF operator of one frame size (seed eq. (3)); x (N, h, w) -> s (N, f h, f w).

    The model-based baseline: min 0.5 ||x - H s||^2 + rho ||s||_1 with the known PSF, n_iter
    iterations, the step mu = 1 / `schur_bound` (<= 1 / ||H||^2, so FISTA converges).
    """

    def __init__(self, shape: Sequence[int], sigma_px: Sequence[float] = PSF_SIGMA_PX, rho: float = 0.05,
                 n_iter: int = 100, factor: int = FACTOR) -> None:
        H = psf_operator(sigma_px, tuple(shape), factor)
        mu = 1.0 / schur_bound(H.kernel[0, 0], factor)
        super().__init__(H, rho=rho, n_iter=n_iter, mu=mu)


# inside the sqrt: a finite gradient at exact zeros (CORONA's shrinkage); values change <= 1e-7
ENVELOPE_EPS = 1e-14


def envelope(x: Tensor) -> Tensor:
    """|S| of the newest frame of I/Q windows (N, T, 2, h, w) -> (N, h, w)."""
    z = x[:, -1]
    return (z[:, 0].square() + z[:, 1].square() + ENVELOPE_EPS).sqrt()


class SuperResolution(nn.Module):
    """One frame's ULM decision: (N, T, 2, h, w) I/Q windows -> (N, 1, 1, f h, f w) localizations.

    envelope of the newest frame / `scale` -> `solver` (ULMLista, or a per-size ULMFista built by
    `fista` on first use) -> `localizer`. `intensity(x)` gives the solver's fine-grid s (N, fH, fW);
    with `intensity_output` set (training), forward returns it instead of the localizations.
    """

    intensity_output = False

    def __init__(self, solver: nn.Module | None = None, localizer: Localizer | None = None,
                 scale: float = BUBBLE_AMP, fista: dict | None = None) -> None:
        super().__init__()
        if (solver is None) == (fista is None):
            raise ValueError("give exactly one of a solver and FISTA's parameters")
        self.solver, self.fista = solver, fista
        self.localizer = localizer or Localizer()
        self.register_buffer("scale", torch.tensor(float(scale)))
        self._fista_by_shape: dict[tuple[int, int], ULMFista] = {}

    def _solve(self, x: Tensor) -> Tensor:
        if self.solver is not None:
            return self.solver(x)
        shape = (int(x.shape[-2]), int(x.shape[-1]))
        if shape not in self._fista_by_shape:  # the operator (and its norm) depends on the frame size
            self._fista_by_shape[shape] = ULMFista(shape, **self.fista)
        return self._fista_by_shape[shape](x)

    def intensity(self, x: Tensor) -> Tensor:
        return self._solve(envelope(x) / self.scale)

    def forward(self, x: Tensor) -> Tensor:
        s = self.intensity(x)
        return s if self.intensity_output else self.localizer(s)[:, None, None]


def localization_positions(localizations: np.ndarray, factor: int = FACTOR) -> np.ndarray:
    """(k, 2) coarse-pixel positions (row, col) of the 1s of one localization image (fH, fW)."""
    return fine_coordinates(np.argwhere(np.asarray(localizations) > 0.5), factor)


@dataclass(frozen=True)
class Matching:
    """Localizations matched to the truth: counts and the squared errors of the matched pairs."""

    tp: int
    fp: int
    fn: int
    sq_errors: np.ndarray  # (tp,) squared distances, coarse pixels^2

    def __add__(self, other: Matching) -> Matching:
        return Matching(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                        np.concatenate([self.sq_errors, other.sq_errors]))

    @property
    def jaccard(self) -> float:
        """TP / (TP + FP + FN): the localization Jaccard index (1 when nothing is to be found)."""
        total = self.tp + self.fp + self.fn
        return self.tp / total if total else 1.0

    @property
    def rmse(self) -> float:
        """Root mean squared error of the matched pairs, coarse pixels (NaN without any)."""
        return float(np.sqrt(self.sq_errors.mean())) if self.tp else float("nan")


def match(found: np.ndarray, truth: np.ndarray, tolerance: float) -> Matching:
    """One-to-one matching of found (k, 2) and true (m, 2) positions by the Hungarian algorithm: the
    most pairs closer than `tolerance` (coarse pixels), and among those the smallest squared error."""
    from scipy.optimize import linear_sum_assignment

    if len(found) == 0 or len(truth) == 0:
        return Matching(0, len(found), len(truth), np.zeros(0))
    d2 = ((found[:, None, :] - truth[None, :, :]) ** 2).sum(-1)
    # a pair beyond the tolerance costs more than all possible matches together
    far = tolerance**2 * (min(d2.shape) + 1)
    rows, cols = linear_sum_assignment(np.where(d2 <= tolerance**2, d2, far))
    ok = d2[rows, cols] <= tolerance**2
    tp = int(ok.sum())
    return Matching(tp, len(found) - tp, len(truth) - tp, d2[rows, cols][ok])


def true_positions(positions: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The simulator's live positions (M, 2) (NaN = free slot) that lie in the field of `shape`."""
    p = positions[~np.isnan(positions[:, 0])]
    inside = (p >= -0.5).all(1) & (p[:, 0] < shape[0] - 0.5) & (p[:, 1] < shape[1] - 0.5)
    return p[inside]


class ULMEngine:
    """Engine around SuperResolution: (N, 1, 2, h, w) float32 I/Q -> (N, 1, 1, 8h, 8w) localizations.

    Window 1 (ULM localizes each frame on its own), any h x w, torch in float32 without
    gradients; task "super-resolution" (the session accumulates the outputs into the map).
    """

    def __init__(self, name: str, family: Family, module: SuperResolution) -> None:
        self.module = module.eval().float()
        self.info = EngineInfo(
            name=name, family=family, task="super-resolution", backend="torch", window=1,
            in_shape=(1, 2, -1, -1), out_shape=(1, 1, -1, -1),
            n_params=sum(p.numel() for p in module.parameters() if p.requires_grad))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[2] != 2:
            raise EngineInputError(f"{self.info.name}: expected (N, 1, 2, H, W) I/Q frames, got {x.shape}")
        check_finite(self.info.name, x)
        return run_in_chunks(self._localize, np.ascontiguousarray(x, dtype=np.float32))  # bounded memory

    def _localize(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()


def build_ulm_fista(*, backend: str = "auto", n_iter: int = 100, rho: float = 0.05, threshold: float = 0.3,
                    psf_sigma_px: Sequence[float] = PSF_SIGMA_PX, scale: float = BUBBLE_AMP) -> ULMEngine:
    """engines.load("ulm-fista", ...): FISTA on the PSF operator, then the localizer; torch only.

    `psf_sigma_px` (a source's meta["model"] fills it in a session) is the PSF sigma in coarse
    pixels (axial, lateral); `threshold` the localizer's (fig7 tunes it on validation frames).
    """
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"ulm-fista: runs on torch only, not {backend!r}")
    if len(psf_sigma_px) != 2 or min(psf_sigma_px) <= 0:
        raise ValueError(f"psf_sigma_px must be two positive sigmas, got {psf_sigma_px}")
    module = SuperResolution(localizer=Localizer(threshold), scale=scale,
                             fista={"sigma_px": tuple(float(v) for v in psf_sigma_px), "rho": float(rho),
                                    "n_iter": int(n_iter)})
    return ULMEngine("ulm-fista", "model-based", module)


def build_network(kwargs: dict, threshold: float = 0.5, scale: float = BUBBLE_AMP) -> SuperResolution:
    """The untrained SuperResolution around ULMLista(**kwargs) (the artifact's module)."""
    return SuperResolution(ULMLista(**kwargs), Localizer(threshold), scale=scale)


def engine_from_artifact(art, *, backend: str = "auto") -> ULMEngine:
    """The ULMEngine of a verified super-resolution artifact (engines.artifacts.Artifact).

    The card's `architecture.kwargs` rebuild ULMLista; the state dict (with the localizer's
    threshold and the input scale) loads strictly; ArtifactError naming the file otherwise.
    """
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: this loader runs torch only, not {backend!r}")
    spec = art.card.get("architecture") or {}
    module = art.build_module(lambda: build_network(spec.get("kwargs", {})), "ULMLista")
    engine = ULMEngine(art.card.get("name", art.path.name), "unfolded", module)
    engine.card = art.card
    return engine
