"""LSPARCOM: SPARCOM's ISTA step unfolded into 10 folds (Dardikman-Yoffe & Eldar, Optics Express
2020; seed Fig. 8, Sec. IV-B).

SPARCOM (engines/imaging/sparcom.py) iterates, on the correlation data g = U M / max(M),

    s_{k+1} = T_theta(W1 g + W2 s_k),   W1 g = mu A'g,   W2 s = s - mu A'A s,              (15)

with A a Gaussian convolution: W1 g = c_i * g and W2 s = s - c_p * s with the kernels
c_i = mu k and c_p = mu (k * k) (k the Gaussian of A). LSPARCOM is that step with a
per-fold parameter policy (ARCHITECTURE.md "One family, one step"):

    s_1     = T_0(W1 g)                        (the first step from s_0 = 0 needs no W2)
    s_{k+1} = T_k(W1 g + s_k - c_p,k * s_k),   k = 1..10, the 10 folds
    output  = a s_11

- c_i (25 x 25, shared by all folds) and c_p,k (29 x 29, one per fold) are radially symmetric:
  a kernel is its radial profile, one free value per distinct i^2 + j^2 in the square (83 for
  25 x 25, 106 for 29 x 29), the constraint of the reference code (the mean over each ring);
- T_k is the smooth positive threshold T(z) = relu(z) sigmoid(tau_k (z - theta_k) / theta_k),
  theta_k = p1 + f_k (p99 - p1), p1 and p99 the 1st and 99th percentiles of z (per image),
  f_k = sigmoid(b_k) the learned fraction and tau_k = exp(log tau_k) the learned sharpness;
- a > 0 the learned output scale.

Weights: 625 + 10 x 841 + 11 x 2 + 1 = 9,058, as the published network's; free: 83 + 10 x
106 + 22 + 1 = 1,166, the published count (ANCHORS.md "LSPARCOM").

The network is positively homogeneous (linear maps, thresholds relative to percentiles), so
the normalization of g sets only the output's unit. Initialized from SPARCOM (`from_sparcom`,
`init_from`): c_i = mu k and c_p,k = mu (k * k) cut to 25 x 25 and 29 x 29. With the
model-based threshold (`model_lam`: T = relu(z - lam max(W1 g)), SPARCOM's theta = mu lam
lam_max) and kernels that fit those sizes, LSPARCOM computes SPARCOM's ISTA iterates (tested
to rounding): the same step, its parameters taken from the model instead of learned.

Fast and exportable form: every convolution runs on the polyphase (space-to-depth)
representation of the fine grid, u^2 = 16 channels at the camera's resolution, where a fine-grid
K x K convolution is a 16 -> 16 channel convolution with ceil-sized kernels (9 x 9 for 29 x 29):
the same function (tested), ~10x faster on a CPU than a 1 -> 1 channel 29 x 29 convolution
(measured: 0.9 vs 8.4 ms on a 256 x 256 fine grid, one core), and what GPUs and TensorRT
run best. The polyphase kernel is a fixed gather from the radial profile, folded into a
constant when exported.

Percentiles with a small TopK: p1 and p99 are read on a fixed-size sample of z, the fine
pixels of phase (0, 0) (one per camera pixel) resized by nearest neighbour to 64 x 64, so
that k = ceil(0.01 x 4096) = 41 whatever the field: TensorRT's TopK takes K <= 3840 (a
percentile by a full sort of a 256 x 256 fine grid would need K = 65536); a field smaller
than 64 x 64 camera pixels repeats its own values, larger ones are subsampled evenly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.errors import BackendUnavailable
from engines.imaging.ista import IstaFamily, IstaLayer, ista_step
from engines.imaging.sparcom import (
    PIXEL_NM,
    PSF_SIGMA_NM,
    UPSAMPLE,
    WINDOW,
    SparcomFista,
    StackEngine,
    correlation_input,
    correlation_sigma_px,
)
from engines.imaging.ulm import nonneg_soft_threshold

FOLDS = 10
INPUT_KERNEL, FOLD_KERNEL = 25, 29
SAMPLE = 64  # the percentile sample is SAMPLE x SAMPLE values
PERCENTILE = 0.01  # p1 and p99
INIT_FRACTION = 0.1  # f_k at initialization: theta just above the bulk of the background
INIT_SHARPNESS = 8.0  # tau_k at initialization (the reference code's)


def ring_index(size: int) -> Tensor:
    """(size, size) int64: the index of i^2 + j^2 among its distinct values (|i|, |j| <= size // 2)."""
    if size % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {size}")
    a = torch.arange(size) - size // 2
    r2 = a[:, None] ** 2 + a[None, :] ** 2
    return torch.unique(r2, return_inverse=True)[1]


def radial_profile(kernel: Tensor, size: int) -> Tensor:
    """The radial profile (mean over each ring) of `kernel` cut or zero-padded to size x size."""
    k = kernel.to(torch.float64)
    d = (k.shape[-1] - size) // 2
    k = k[d:d + size, d:d + size] if d >= 0 else F.pad(k, (-d, -d, -d, -d))
    idx = ring_index(size).flatten()
    n = int(idx.max()) + 1
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, idx, k.flatten())
    return sums / torch.bincount(idx, minlength=n)


def polyphase_index(size: int, u: int) -> tuple[Tensor, int]:
    """(index (u^2, u^2, Kc, Kc) into a flattened size x size kernel, size^2 meaning 0; Kc's half width Pc).

    conv2d(s, w, padding=size // 2) on the fine grid = pixel_shuffle(conv2d(pixel_unshuffle(s, u),
    w_flat[index], padding=Pc), u), with w_flat = w.flatten() + [0]: output phase a, input phase
    c, tap t take w[u (t - Pc) + c - a + P] in each axis (P = size // 2).
    """
    P = size // 2
    Pc = max(-math.floor(-P / u), math.floor((u - 1 + size - 1 - P) / u))
    t = torch.arange(2 * Pc + 1) - Pc
    a = torch.arange(u)
    p = u * t[None, None, :] + a[None, :, None] - a[:, None, None] + P  # (a, c, t) -> kernel index
    valid = (p >= 0) & (p < size)
    pr, pc = p[:, None, :, None, :, None], p[None, :, None, :, None, :]  # (ar, ac, cr, cc, tr, tc)
    ok = valid[:, None, :, None, :, None] & valid[None, :, None, :, None, :]
    index = torch.where(ok, pr * size + pc, torch.tensor(size * size))
    return index.reshape(u * u, u * u, 2 * Pc + 1, 2 * Pc + 1), Pc


class RadialConvolution(nn.Module):
    """Radially symmetric size x size convolutions on the polyphase grid, one per profile row.

    Kernel j's radial profile is gain[j] profile[j]: the learned `profile` (n, R) is O(1) and the
    fixed `gain` (n, 1) its initial scale (Adam's steps are about lr in absolute size, so kernels
    of size ~1e-2 would be thrown around). `weight(j)` is kernel j's polyphase weight
    (u^2, u^2, Kc, Kc), `kernel(j)` its fine-grid size x size form.
    """

    def __init__(self, n: int, size: int, u: int) -> None:
        super().__init__()
        ring = ring_index(size)
        self.size, self.u = size, u
        self.profile = nn.Parameter(torch.zeros(n, int(ring.max()) + 1))
        self.register_buffer("gain", torch.ones(n, 1))
        poly, self.padding = polyphase_index(size, u)
        zero_slot = int(ring.max()) + 1  # the appended 0 of the profile
        self.register_buffer("gather", torch.cat([ring.flatten(), torch.tensor([zero_slot])])[poly],
                             persistent=False)
        self.register_buffer("ring", ring, persistent=False)

    def set_profiles(self, profiles: Tensor) -> None:
        """Kernels with the radial profiles `profiles` (n, R) (float64 welcome): gain = max |profile|."""
        gain = profiles.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        with torch.no_grad():
            self.gain.copy_(gain)
            self.profile.copy_(profiles / gain)

    def kernel(self, j: int) -> Tensor:
        return (self.gain[j] * self.profile[j])[self.ring]

    def weight(self, j: int) -> Tensor:
        return F.pad(self.gain[j] * self.profile[j], (0, 1))[self.gather]

    def conv(self, s: Tensor, j: int) -> Tensor:
        """Fine-grid kernel j applied to polyphase images s (N, u^2, h, w)."""
        return F.conv2d(s, self.weight(j), padding=self.padding)


def percentiles(z: Tensor) -> tuple[Tensor, Tensor]:
    """(p1, p99), each (N, 1, 1, 1), of polyphase images z (N, u^2, h, w) (module docstring)."""
    sample = F.interpolate(z[:, :1], size=(SAMPLE, SAMPLE), mode="nearest").flatten(1)
    k = math.ceil(PERCENTILE * SAMPLE * SAMPLE)
    p99 = sample.topk(k, dim=1).values[:, -1]
    p1 = -(-sample).topk(k, dim=1).values[:, -1]
    return p1.reshape(-1, 1, 1, 1), p99.reshape(-1, 1, 1, 1)


def smooth_positive_threshold(z: Tensor, fraction: Tensor, sharpness: Tensor) -> Tensor:
    """relu(z) sigmoid(tau (z - theta) / theta), theta = p1 + fraction (p99 - p1) (module docstring)."""
    p1, p99 = percentiles(z)
    theta = torch.relu(p1 + fraction * (p99 - p1)).clamp_min(torch.finfo(z.dtype).tiny)
    return torch.relu(z) * torch.sigmoid(sharpness * (z - theta) / theta)


class LSPARCOM(IstaFamily):
    """LSPARCOM on the correlation data g (N, uH, uW) -> (N, uH, uW) (module docstring).

    `model_lam` set (not None): the model-based threshold relu(z - model_lam max(W1 g)) in
    every fold instead of the learned smooth one (the coincidence with SPARCOM's ISTA).
    """

    def __init__(self, folds: int = FOLDS, upsample: int = UPSAMPLE, input_kernel: int = INPUT_KERNEL,
                 fold_kernel: int = FOLD_KERNEL, psf_sigma_nm: float = PSF_SIGMA_NM,
                 pixel_nm: float = PIXEL_NM) -> None:
        sigma_px = correlation_sigma_px(psf_sigma_nm, pixel_nm, upsample)
        model = SparcomFista((16 * upsample, 16 * upsample), sigma_px, n_iter=folds + 1, momentum=False)
        super().__init__(model.H, folds + 1)
        self.folds, self.u = int(folds), int(upsample)
        self.W_i = RadialConvolution(1, input_kernel, self.u)
        self.W_p = RadialConvolution(self.folds, fold_kernel, self.u)
        self.b = nn.Parameter(torch.full((self.folds + 1,), math.log(INIT_FRACTION / (1 - INIT_FRACTION))))
        self.log_tau = nn.Parameter(torch.full((self.folds + 1,), math.log(INIT_SHARPNESS)))
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.model_lam: float | None = None
        self.init_from(model)

    def init_from(self, model: SparcomFista) -> None:
        """Kernels from SPARCOM's operator: c_i = mu k, every c_p,k = mu (k * k) (cut to size)."""
        k = model.kernel()
        kk = F.conv2d(F.pad(k, [k.shape[-1] - 1] * 4)[None, None], k[None, None])[0, 0]  # k * k (symmetric k)
        self.W_i.set_profiles(radial_profile(model.mu * k, self.W_i.size)[None])
        self.W_p.set_profiles(radial_profile(model.mu * kk, self.W_p.size).expand(self.folds, -1))

    @classmethod
    def from_sparcom(cls, model: SparcomFista, folds: int = FOLDS) -> LSPARCOM:
        """LSPARCOM at SPARCOM's values: its kernels and its threshold (lam), output scale 1."""
        net = cls(folds=folds)
        net.init_from(model)
        net.model_lam = model.lam
        return net

    @property
    def fraction(self) -> Tensor:
        return torch.sigmoid(self.b)

    def layer(self, k: int) -> IstaLayer:
        """Fold k on polyphase images: W1 g the shared data term, W2 s = s - c_p,k-1 * s (k >= 1)."""
        W2 = (lambda s: s) if k == 0 else (lambda s: s - self.W_p.conv(s, k - 1))  # s_0 = 0: W2 unused
        if self.model_lam is not None:
            return IstaLayer(W1=lambda g: self._W1g, W2=W2, theta=self._theta, shrink=nonneg_soft_threshold)
        sharpness = self.log_tau[k].exp()
        return IstaLayer(W1=lambda g: self._W1g, W2=W2, theta=self.fraction[k],
                         shrink=lambda z, f: smooth_positive_threshold(z, f, sharpness))

    def iterates(self, g: Tensor) -> list[Tensor]:
        """[s_1, ..., s_11] on the fine grid, without the output scale."""
        return [F.pixel_shuffle(s, self.u)[:, 0] for s in self._run(g, return_all=True)[1:]]

    def _run(self, g: Tensor, return_all: bool = False) -> Tensor | list[Tensor]:
        gp = F.pixel_unshuffle(g[:, None], self.u)  # (N, u^2, H, W)
        self._W1g = self.W_i.conv(gp, 0)
        if self.model_lam is not None:
            self._theta = self.model_lam * self._W1g.amax(dim=(1, 2, 3), keepdim=True)
        s = torch.zeros_like(self._W1g)
        iterates = [s]
        for k in range(self.n_layers):
            s = ista_step(s, gp, self.layer(k))
            iterates.append(s)
        return iterates if return_all else s

    def forward(self, g: Tensor) -> Tensor:
        return self.log_scale.exp() * F.pixel_shuffle(self._run(g), self.u)[:, 0]


class StackSR(nn.Module):
    """The whole LSPARCOM decision: windows (N, T, 1, H, W) of frames -> (N, 1, 1, uH, uW).

    correlation_input (variance, normalization, x u; shared with SPARCOM) then the network.
    """

    def __init__(self, net: LSPARCOM) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(correlation_input(x, self.net.u))[:, None, None]


def weight_counts(net: LSPARCOM) -> dict[str, int]:
    """The network's weights as dense kernels ("total") and its free parameters ("free")."""
    dense = net.W_i.size**2 + net.folds * net.W_p.size**2 + net.b.numel() + net.log_tau.numel() + 1
    return {"total": dense, "free": sum(p.numel() for p in net.parameters() if p.requires_grad)}


def build_network(kwargs: dict) -> StackSR:
    """The untrained StackSR around LSPARCOM(**kwargs) (an artifact's module)."""
    return StackSR(LSPARCOM(**kwargs))


def engine_from_artifact(art, *, backend: str = "auto") -> StackEngine:
    """The StackEngine of a verified LSPARCOM artifact (engines.artifacts.Artifact).

    The card's `architecture.kwargs` rebuild LSPARCOM, `input.window` is the stack length; the
    state dict loads strictly (ArtifactError naming the file otherwise).
    """
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: this loader runs torch only, not {backend!r}")
    spec = art.card.get("architecture") or {}
    module = art.build_module(lambda: build_network(spec.get("kwargs", {})), "LSPARCOM")
    window = int((art.card.get("input") or {}).get("window", WINDOW))
    engine = StackEngine(art.card.get("name", art.path.name), "unfolded", module, window, module.net.u)
    engine.card = art.card
    return engine
