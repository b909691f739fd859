"""CORONA for a live sliding window: the same layers, computed pixel-interleaved (issue 15).

`CoronaFast` is CORONA (engines.imaging.corona: the RPCA step with learned complex
convolutions P1..P6 and relative thresholds, Solomon et al. 2019) with three changes of
*how* it is computed, none of *what*:

- the windows live as (N, T, H, W, 2), I/Q interleaved per pixel. Then the concatenation
  [D, S, L] of a layer's input is channels-last for the convolution (one 6 -> 4 channel
  convolution per layer, which mkldnn runs ~3x faster channels-last than on the (N T, 6, H,
  W) planes: 4.2 vs 17.6 ms for 20 frames of 128 x 128 on one core), and the SVT and the
  shrinkage read that layout directly: with Y (N, T, 2 H W) the interleaved rows, and Y' the
  rows multiplied by i ((I, Q) -> (-Q, I)),

      Re G = Y Y^T,   Im G = -Y Y'^T,   Z g = g_r^T Y + g_i^T Y'        (G = Z^H Z, g = g(G))

  (the same products as `engines.ops.svt_exportable`'s frame-major route);
- one layer at a time, keeping only the current (L, S): no data terms of every layer
  computed up front (CORONA's `iterates` does that in one 2 -> 4 K channel convolution,
  which is slow for mkldnn at 128 x 128 and holds 2 K window-sized tensors: most of its
  memory at batch 32, see mbdl_app/bench/engines_bench.py);
- the Newton-Schulz iteration counts of the SVT are parameters (`sign_iterations`,
  `inv_sqrt_iterations`, `power_squarings`): the shipped corona-ceus keeps its fig6 MSE
  (0.114) at 12 / 10 / 4 instead of 40 / 24 / 6, so a student trains and runs with fewer.

Traced for ONNX, the module takes CORONA's planar route instead (`_planar_layers`, same function):
ONNX Runtime's convolutions are planar, and the interleaved graph measured 2.0x slower there (2593
vs 1275 ms median per 128 x 128 x 20 window, one thread, load average 14).

At the default iteration counts `CoronaFast` with CORONA's weights is CORONA (tested to float
rounding). The student artifact `corona-fast` (recipe mbdl_app/training/recipes/corona_fast.py)
is this module with 3 x 3 kernels in every layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from engines.imaging.corona import CORONA, SVT_SCALE, complex_block, frames_relative_mixed_shrinkage
from engines.ops.svt_exportable import (
    INV_SQRT_ITERATIONS,
    POWER_SQUARINGS,
    SIGN_ITERATIONS,
    frames_apply_gain,
    frames_gram_embedding,
    svt_gain,
    top_eigenvalue,
)


def times_i(Y: Tensor) -> Tensor:
    """i Z of interleaved complex rows Y (..., 2 M): (I, Q) -> (-Q, I) per pixel."""
    P = Y.unflatten(-1, (-1, 2))
    return torch.stack([-P[..., 1], P[..., 0]], dim=-1).flatten(-2)


def interleaved_svt(x: Tensor, fraction: Tensor, sign_iterations: int = SIGN_ITERATIONS,
                    inv_sqrt_iterations: int = INV_SQRT_ITERATIONS,
                    power_squarings: int = POWER_SQUARINGS) -> Tensor:
    """CORONA's relative SVT (tau = fraction 0.4 sigma_max of each window's Casorati matrix) of
    windows stored interleaved, x (N, T, H, W, 2); returns the same layout."""
    N, T = x.shape[0], x.shape[1]
    Y = x.reshape(N, T, -1)
    Yi = times_i(Y)
    Gr = Y @ Y.transpose(-2, -1)  # Re Z^H Z
    Gi = -(Y @ Yi.transpose(-2, -1))  # Im Z^H Z
    G = torch.cat([torch.cat([Gr, -Gi], dim=-1), torch.cat([Gi, Gr], dim=-1)], dim=-2)
    tau = fraction * SVT_SCALE * top_eigenvalue(G, power_squarings).clamp_min(0).sqrt()
    gr, gi = svt_gain(G, tau, sign_iterations, inv_sqrt_iterations)
    return (gr.transpose(-2, -1) @ Y + gi.transpose(-2, -1) @ Yi).reshape(x.shape)


def interleaved_mixed_shrinkage(x: Tensor, fraction: Tensor) -> Tensor:
    """CORONA's relative row-wise mixed shrinkage of windows stored interleaved (N, T, H, W, 2):
    each pixel's norm over (T, I/Q), tau = fraction x the window's mean pixel norm."""
    norm = x.square().sum(dim=-1, keepdim=True).sum(dim=1, keepdim=True).sqrt()  # (N, 1, H, W, 1)
    tau = fraction * norm.mean(dim=(2, 3), keepdim=True)
    return x * (torch.relu(norm - tau) / norm.clamp_min(torch.finfo(norm.dtype).tiny))


def _as_pairs(x: Tensor) -> bool:
    """Whether x's (I, Q) pairs may be moved as one float64 each: inference in eager mode (a dtype
    view is not differentiable and does not trace to ONNX), float32, last axis 2 and contiguous."""
    return (not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()
            and x.dtype == torch.float32 and x.shape[-1] % 2 == 0 and x.stride(-1) == 1)


def interleave(parts: list[Tensor]) -> Tensor:
    """torch.cat(parts, -1) of interleaved windows (..., 2): the convolution's channels-last input.

    At inference each (I, Q) pair moves as one float64: torch copies a last axis of 2 float32
    element by element (measured for 20 x 128 x 128 pairs: torch.cat 15 ms, slice assignment 1.7 ms,
    as float64 0.7 ms)."""
    if not all(_as_pairs(p) and p.is_contiguous() for p in parts):
        return torch.cat(parts, dim=-1)
    out = parts[0].new_empty(*parts[0].shape[:-1], 2 * len(parts))
    wide = out.view(torch.float64)
    for j, p in enumerate(parts):
        wide[..., j:j + 1] = p.view(torch.float64)
    return out


def split_pairs(z: Tensor) -> tuple[Tensor, Tensor]:
    """(z[..., :2], z[..., 2:]) of a contiguous (..., 4) as contiguous tensors (float64 moves, as
    `interleave`: 0.4 vs 6.6 ms for 20 x 128 x 128); views when not at inference."""
    if not (_as_pairs(z) and z.is_contiguous()):
        return z[..., :2], z[..., 2:]
    wide = z.view(torch.float64)
    return wide[..., 0:1].contiguous().view(torch.float32), wide[..., 1:2].contiguous().view(torch.float32)


class CoronaFast(CORONA):
    """CORONA computed interleaved, one layer at a time, with SVT iteration counts as parameters.

    Same parameters as CORONA (`kernels`, `a`, `b`; kernel `large` in the first `large_layers`,
    `small` after), so CORONA's state dict loads into it. forward(D (N, T, 2, H, W)) -> S, or
    stack([L, S], 1) with `pair_output` (training); `iterates(D)` every layer's (L, S).
    """

    def __init__(self, n_layers: int = 10, large_layers: int = 0, large: int = 5, small: int = 3,
                 sign_iterations: int = SIGN_ITERATIONS, inv_sqrt_iterations: int = INV_SQRT_ITERATIONS,
                 power_squarings: int = POWER_SQUARINGS, output: str = "S") -> None:
        super().__init__(n_layers, large_layers, large, small, output)
        if min(sign_iterations, inv_sqrt_iterations, power_squarings) < 1:
            raise ValueError(f"SVT iteration counts must be >= 1, got {sign_iterations}, "
                             f"{inv_sqrt_iterations}, {power_squarings}")
        self.svt_iterations = (int(sign_iterations), int(inv_sqrt_iterations), int(power_squarings))

    def _planar_layers(self, D: Tensor, K: int) -> list[tuple[Tensor, Tensor]]:
        """CORONA's own route (`CORONA.iterates`: windows as stored, the data terms of all layers in
        one convolution per kernel size) with this module's SVT iteration counts: the graph that
        ONNX Runtime runs fastest (its convolutions are planar; the interleaved route exports
        transposes around every one)."""
        N, T, C, H, W = D.shape
        blocks = [[complex_block(w) for w in self.kernels[k]] for k in range(K)]
        data_terms: dict[int, Tensor] = {}
        for size in sorted(set(self.kernel_sizes[:K])):
            ks = [k for k in range(K) if self.kernel_sizes[k] == size]
            w = torch.cat([torch.cat([blocks[k][0], blocks[k][1]]) for k in ks])
            z = F.conv2d(D.reshape(N * T, C, H, W), w, padding=size // 2)
            for j, k in enumerate(ks):
                data_terms[k] = z[:, 4 * j:4 * j + 4]
        sign, inv_sqrt, squarings = self.svt_iterations
        out: list[tuple[Tensor, Tensor]] = []
        for k in range(K):
            z = data_terms[k]
            if out:
                L, S = out[-1]
                B = blocks[k]
                w = torch.cat([torch.cat([B[2], B[4]], dim=1), torch.cat([B[3], B[5]], dim=1)])
                z = z + F.conv2d(torch.cat([S, L], dim=2).reshape(N * T, 2 * C, H, W), w,
                                 padding=self.kernel_sizes[k] // 2)
            z = z.reshape(N, T, 2 * C, H, W)
            Y = z[:, :, :C].reshape(N, 2 * T, -1)
            G = frames_gram_embedding(Y)
            tau = torch.sigmoid(self.a[k]) * SVT_SCALE * top_eigenvalue(G, squarings).clamp_min(0).sqrt()
            gr, gi = svt_gain(G, tau, sign, inv_sqrt)
            L = frames_apply_gain(Y, gr, gi).reshape(N, T, C, H, W)
            out.append((L, frames_relative_mixed_shrinkage(z[:, :, C:], torch.sigmoid(self.b[k]))))
        return out

    def _layers(self, D: Tensor, n_layers: int | None, keep: bool) -> list[tuple[Tensor, Tensor]]:
        """(L, S) interleaved after every layer (`keep`) or after the last only."""
        K = self.n_layers if n_layers is None else n_layers
        N, T, C, H, W = D.shape
        Dx = D.permute(0, 1, 3, 4, 2).contiguous()  # (N, T, H, W, 2)
        Lx = Sx = Dx
        out: list[tuple[Tensor, Tensor]] = []
        for k in range(K):
            B = [complex_block(w) for w in self.kernels[k]]
            if k == 0:  # S_0 = L_0 = 0: only the data terms P1 D, P2 D
                w = torch.cat([B[0], B[1]])
                x = Dx
            else:
                w = torch.cat([torch.cat([B[0], B[2], B[4]], dim=1), torch.cat([B[1], B[3], B[5]], dim=1)])
                x = interleave([Dx, Sx, Lx])
            x = x.reshape(N * T, H, W, -1).permute(0, 3, 1, 2)  # channels-last view, no copy
            z = F.conv2d(x, w, padding=self.kernel_sizes[k] // 2).permute(0, 2, 3, 1)
            zL, zS = split_pairs(z.reshape(N, T, H, W, 2 * C))
            Lx = interleaved_svt(zL, torch.sigmoid(self.a[k]), *self.svt_iterations)
            Sx = interleaved_mixed_shrinkage(zS, torch.sigmoid(self.b[k]))
            if keep or k == K - 1:
                out.append((Lx, Sx))
        return out

    @staticmethod
    def _planar(x: Tensor) -> Tensor:
        return x.permute(0, 1, 4, 2, 3).contiguous()  # (N, T, H, W, 2) -> (N, T, 2, H, W)

    def iterates(self, D: Tensor, n_layers: int | None = None) -> list[tuple[Tensor, Tensor]]:
        return [(self._planar(L), self._planar(S)) for L, S in self._layers(D, n_layers, keep=True)]

    def forward(self, D: Tensor) -> Tensor:
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():  # the ONNX graph: planar
            L, S = self._planar_layers(D, self.n_layers)[-1]
        else:
            L, S = (self._planar(x) for x in self._layers(D, None, keep=False)[-1])
        return torch.stack([L, S], dim=1) if self.pair_output else self.shown(D, L, S)
