"""CORONA: deep unfolded robust PCA (Solomon et al., IEEE TMI 2019; seed Fig. 6, Sec. IV-A).

The RPCA step of `engines.imaging.rpca` with a per-layer parameter policy: layer k's six
maps P1..P6 are learned complex 2-D convolutions (5 x 5 in layers 1-3, 3 x 3 after; each a
pair of real kernels, applied to every frame of the window), and its thresholds are learned
relative to the data (ANCHORS.md "CORONA"):

    tau_L,k = sigmoid(a_k) 0.4 sigma_max(Z_L)        SVT of Z_L = P1 D + P3 S + P5 L
    tau_S,k = sigmoid(b_k) mean_i ||(Z_S)_i||_2       mixed shrinkage of Z_S = P2 D + P4 S + P6 L

Both thresholds scale with the data, and the convolutions are linear, so the network is
positively homogeneous: a window scaled by c gives the result scaled by c (no input
normalization needed, any H x W). The kernels start at the model-based values (a centred
delta times mu = 1/2 or 1 - mu, the RPCA-ISTA step with H1 = H2 = I), so before training
CORONA is K iterations of RPCA-ISTA with these relative thresholds (tested).

The SVT is `engines.ops.svt_exportable` (matrix products only), and sigma_max its power
estimate, so the same graph trains in torch and runs in ONNX Runtime. About 1,700
parameters for K = 10 (the anchors: ~1,800).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.imaging.rpca import (
    LIPSCHITZ,
    RpcaFamily,
    RpcaLayer,
    casorati,
    from_casorati,
    window_mixed_shrinkage,
)
from engines.ops.svt_exportable import (
    frames_apply_gain,
    frames_gram_embedding,
    gram_embedding,
    svt_from_gram,
    svt_gain,
    top_eigenvalue,
)

SVT_SCALE = 0.4  # tau_L = sigmoid(a) 0.4 sigma_max (the anchors)
INIT_SVT_FRACTION = 0.02  # sigmoid(a_0): about RPCA-FISTA's tuned tau_L / (0.4 sigma_max) on sim:ceus windows
INIT_SHRINK_FRACTION = 0.1  # sigmoid(b_0)


def complex_block(w: Tensor) -> Tensor:
    """The real (2, 2, k, k) weight of the complex kernel w (2, k, k) = [wr, wi]:
    (wr + i wi) * (xr + i xi) = (wr * xr - wi * xi) + i (wi * xr + wr * xi)."""
    return torch.stack([torch.stack([w[0], -w[1]]), torch.stack([w[1], w[0]])])


def convolution_mix(kernels: Tensor):
    """The mix (D, S, L) -> (P1 D + P3 S + P5 L, P2 D + P4 S + P6 L) of complex kernels (6, 2, k, k).

    All six run as ONE real convolution of every frame, input channels [D, S, L] (I, Q each),
    output [Z_L, Z_S]: six 2 -> 2 convolutions cost several times more on a CPU than one
    6 -> 4 (the per-call overhead and poor vectorization of 2-channel convolutions; measured).
    "Same" size, zero boundary, cross-correlation (as conv2d).
    """
    B = [complex_block(w) for w in kernels]  # P1..P6
    weight = torch.cat([torch.cat([B[0], B[2], B[4]], dim=1), torch.cat([B[1], B[3], B[5]], dim=1)])
    pad = kernels.shape[-1] // 2

    def mix(D: Tensor, S: Tensor, L: Tensor) -> tuple[Tensor, Tensor]:
        N, T, _, H, W = D.shape
        x = torch.cat([D, S, L], dim=2).reshape(N * T, 6, H, W)
        z = F.conv2d(x, weight, padding=pad).reshape(N, T, 4, H, W)
        return z[:, :, :2], z[:, :, 2:]

    return mix


def frames_relative_svt(x: Tensor, fraction: Tensor) -> Tensor:
    """`relative_svt` on windows (N, T, 2, H, W) as stored: the transposed Casorati matrix is a
    reshape (rows (t, I/Q)), so no transpose of the data (measured: the transposes of the
    Casorati route cost as much as the SVT's products)."""
    N, T = x.shape[0], x.shape[1]
    Y = x.reshape(N, 2 * T, -1)
    G = frames_gram_embedding(Y)
    tau = fraction * SVT_SCALE * top_eigenvalue(G).clamp_min(0).sqrt()
    gr, gi = svt_gain(G, tau)
    return frames_apply_gain(Y, gr, gi).reshape(x.shape)


def frames_relative_mixed_shrinkage(x: Tensor, fraction: Tensor) -> Tensor:
    """`relative_mixed_shrinkage` without the permute to Casorati rows: each pixel's norm over
    (T, I/Q) is a reduction of the window as stored, the shrinkage a broadcast factor."""
    norm = x.square().sum(dim=(1, 2), keepdim=True).sqrt()  # (N, 1, 1, H, W)
    tau = fraction * norm.mean(dim=(3, 4), keepdim=True)
    return x * (torch.relu(norm - tau) / norm.clamp_min(torch.finfo(norm.dtype).tiny))


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def relative_svt(x: Tensor, fraction: Tensor) -> Tensor:
    """SVT of each window's Casorati matrix at tau = fraction 0.4 sigma_max (exportable)."""
    Zr, Zi = casorati(x)
    G = gram_embedding(Zr, Zi)
    tau = fraction * SVT_SCALE * top_eigenvalue(G).clamp_min(0).sqrt()
    Lr, Li = svt_from_gram(Zr, Zi, tau, G)
    return from_casorati(Lr, Li, x)


def relative_mixed_shrinkage(x: Tensor, fraction: Tensor) -> Tensor:
    """Row-wise mixed shrinkage at tau = fraction x (the mean row norm of each window)."""
    norms = x.square().sum(dim=(1, 2)).sqrt()  # (N, H, W): each pixel's time-series norm
    return window_mixed_shrinkage(x, fraction * norms.mean(dim=(1, 2)))


def _delta_kernel(size: int, value: float) -> Tensor:
    w = torch.zeros(2, size, size)
    w[0, size // 2, size // 2] = value
    return w


class CORONA(RpcaFamily):
    """CORONA with `n_layers` layers (default 10); kernel 5 x 5 in the first `large_layers`, 3 x 3 after.

    Parameters per layer k: `kernels[k]` (6, 2, s, s), the complex kernels of P1..P6, and
    `a[k]`, `b[k]`, the threshold logits. forward(D (N, T, 2, H, W)) -> S (the bubbles), or with
    output="residual" D - L (the data minus the tissue estimate: the bubbles unshrunk, what a
    localizer is fed in the chain of `engines.imaging.motion`);
    `iterates(D)` gives every layer's (L, S) (seed Fig. 6's MSE per layer).
    """

    def __init__(self, n_layers: int = 10, large_layers: int = 3, large: int = 5, small: int = 3,
                 output: str = "S") -> None:
        super().__init__(n_layers)
        if output not in ("S", "residual"):
            raise ValueError(f"output must be 'S' (the bubbles) or 'residual' (D - L), got {output!r}")
        self.output = output
        mu = 1.0 / LIPSCHITZ
        init = (mu, mu, -mu, 1 - mu, 1 - mu, -mu)  # P1..P6 of RPCA-ISTA with H1 = H2 = I
        self.kernel_sizes = [large if k < large_layers else small for k in range(n_layers)]
        self.kernels = nn.ParameterList(
            nn.Parameter(torch.stack([_delta_kernel(s, v) for v in init])) for s in self.kernel_sizes)
        self.a = nn.Parameter(torch.full((n_layers,), _logit(INIT_SVT_FRACTION)))
        self.b = nn.Parameter(torch.full((n_layers,), _logit(INIT_SHRINK_FRACTION)))

    def layer(self, k: int) -> RpcaLayer:
        """Layer k as a generic RPCA step (the reference that `iterates` is tested against)."""
        a, b = torch.sigmoid(self.a[k]), torch.sigmoid(self.b[k])
        return RpcaLayer(convolution_mix(self.kernels[k]), prox_L=lambda x: relative_svt(x, a),
                         prox_S=lambda x: relative_mixed_shrinkage(x, b))

    def iterates(self, D: Tensor, n_layers: int | None = None) -> list[tuple[Tensor, Tensor]]:
        """The layers of `layer(k)` computed faster, same function (tested to float rounding):

        - the data terms (P1 D, P2 D) of all layers come from ONE convolution per kernel
          size (2 -> 4 K' channels) before the loop, and layer k convolves only [S, L]
          (4 -> 4 channels): the same MACs in fewer, larger calls, and no concatenation of D;
        - layer 1 skips the convolution of S_0 = L_0 = 0;
        - SVT and shrinkage run on the windows as stored (frames_relative_*).
        """
        K = self.n_layers if n_layers is None else n_layers
        N, T, C, H, W = D.shape
        blocks = [[complex_block(w) for w in self.kernels[k]] for k in range(K)]
        data_terms: dict[int, Tensor] = {}
        for size in sorted(set(self.kernel_sizes[:K])):
            ks = [k for k in range(K) if self.kernel_sizes[k] == size]
            w = torch.cat([torch.cat([blocks[k][0], blocks[k][1]]) for k in ks])  # (4 K', 2, s, s)
            z = F.conv2d(D.reshape(N * T, C, H, W), w, padding=size // 2)
            for j, k in enumerate(ks):
                data_terms[k] = z[:, 4 * j:4 * j + 4]
        out = []
        for k in range(K):
            z = data_terms[k]
            if out:
                L, S = out[-1]
                B = blocks[k]
                w = torch.cat([torch.cat([B[2], B[4]], dim=1), torch.cat([B[3], B[5]], dim=1)])
                x = torch.cat([S, L], dim=2).reshape(N * T, 2 * C, H, W)
                z = z + F.conv2d(x, w, padding=self.kernel_sizes[k] // 2)
            z = z.reshape(N, T, 2 * C, H, W)
            out.append((frames_relative_svt(z[:, :, :C], torch.sigmoid(self.a[k])),
                        frames_relative_mixed_shrinkage(z[:, :, C:], torch.sigmoid(self.b[k]))))
        return out
