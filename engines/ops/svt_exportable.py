"""Singular value thresholding built from matrix products only, so that it exports to ONNX.

ONNX has no SVD or eigendecomposition operator, and CORONA (seed Fig. 6) applies an SVT
in every layer. For a tall Casorati matrix Z (M x T, M = H*W pixels >> T frames) the SVT
is a matrix function of the small T x T Gram matrix G = Z^H Z = V diag(sigma^2) V^H:

    SVT_tau(Z) = U diag(max(sigma - tau, 0)) V^H = Z g(G),   g(lambda) = max(1 - tau / sqrt(lambda), 0)

and g(G) = I - tau M^{-1/2} with M = max(G, tau^2 I), the matrix whose eigenvalues are
max(lambda_i, tau^2) (then 1 - tau / sqrt(max(lambda, tau^2)) = g(lambda) exactly). M
comes from the matrix sign function:

    M = (G + tau^2 I + (G - tau^2 I) sign(G - tau^2 I)) / 2

and both sign(A) and M^{-1/2} are computed by Newton-Schulz iterations, which use only
matrix products (Higham, "Functions of Matrices", 2008, eqs. (5.22), (6.35)):

    sign:     X_0 = A / ||A||_F,        X <- X (3 I - X^2) / 2
    M^{-1/2}: Y_0 = M / ||M||_F, Z_0 = I,  P = (3 I - Z Y) / 2,  Y <- Y P,  Z <- P Z
              (Z -> (M / ||M||_F)^{-1/2})

Why this and not Jacobi sweeps on G: a Jacobi sweep on a 40 x 40 matrix is 39 rounds of
rotations, several sweeps per SVT and ten SVTs per network, i.e. tens of thousands of
small ONNX nodes whose per-node overhead dominates; the iterations here are ~150
products of a 2T x 2T matrix per SVT. Their one weakness is harmless here: an eigenvalue
lambda close to tau^2 converges slowly in the sign iteration, but there g(lambda) ~ 0,
so an unconverged sign moves the result by at most g(lambda) (small). The M^{-1/2}
iteration sees eigenvalues in [tau^2, ||M||] and converges linearly at 9/4 per
iteration for the smallest ratio, then quadratically. Accuracy against
torch.linalg.svd is tested (tests/engines/ops/test_svt_exportable.py).

Complex data without complex tensors (ONNX Runtime has none): Z is given as its real and
imaginary parts, and G is handled through its real 2T x 2T embedding [[Gr, -Gi], [Gi, Gr]],
which commutes with every matrix function (f of the embedding = embedding of f(G)).
Batch-first: Zr, Zi (N, M, T); tau (N,) or a float. Differentiable (only products and
sums), so a network trains through it.
"""

from __future__ import annotations

import torch
from torch import Tensor

SIGN_ITERATIONS = 40  # 1.5^40 ~ 1e7: eigenvalues 1e-7 ||G||_F from tau^2 reach sign +-1 (see tests)
INV_SQRT_ITERATIONS = 24  # (9/4)^12 ~ 1e4 covers ||M|| / tau^2 up to 1e4, then quadratic steps
POWER_SQUARINGS = 6  # G^(2^6): the Rayleigh quotient of G^64 1 for the largest eigenvalue


def as_threshold(tau: Tensor | float, like: Tensor) -> Tensor:
    """tau as a tensor of like's dtype; a tensor is used as is (torch.as_tensor would make it a
    constant of a traced ONNX graph, freezing a data-dependent threshold)."""
    return tau if isinstance(tau, Tensor) else torch.tensor(tau, dtype=like.dtype, device=like.device)


def gram_embedding(Zr: Tensor, Zi: Tensor) -> Tensor:
    """The real 2T x 2T embedding (N, 2T, 2T) of G = Z^H Z for Z = Zr + i Zi (N, M, T)."""
    Gr = Zr.transpose(-2, -1) @ Zr + Zi.transpose(-2, -1) @ Zi  # Re(Z^H Z)
    Gi = Zr.transpose(-2, -1) @ Zi - Zi.transpose(-2, -1) @ Zr  # Im(Z^H Z)
    return torch.cat([torch.cat([Gr, -Gi], dim=-1), torch.cat([Gi, Gr], dim=-1)], dim=-2)


def _frobenius(A: Tensor) -> Tensor:
    """||A||_F per matrix, (N, 1, 1), never 0 (a zero matrix stays zero after dividing)."""
    return A.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(torch.finfo(A.dtype).tiny)


def matrix_sign(A: Tensor, iterations: int = SIGN_ITERATIONS) -> Tensor:
    """sign(A) of symmetric matrices A (N, n, n) by the Newton-Schulz iteration X <- X (3I - X^2) / 2."""
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    X = A / _frobenius(A)  # eigenvalues in [-1, 1]: inside the iteration's basin (-sqrt 3, sqrt 3)
    for _ in range(iterations):
        X = 0.5 * X @ (3 * eye - X @ X)
    return X


def inverse_sqrt(M: Tensor, iterations: int = INV_SQRT_ITERATIONS) -> Tensor:
    """M^{-1/2} of symmetric positive definite matrices M (N, n, n) by coupled Newton-Schulz."""
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    c = _frobenius(M)
    Y, Z = M / c, eye.expand_as(M)  # ||I - M/c||_2 < 1: the iteration converges
    for _ in range(iterations):
        P = 0.5 * (3 * eye - Z @ Y)
        Y, Z = Y @ P, P @ Z
    return Z / c.sqrt()


def top_eigenvalue(A: Tensor, squarings: int = POWER_SQUARINGS) -> Tensor:
    """The largest eigenvalue (N,) of symmetric positive semidefinite A (N, n, n), estimated.

    The Rayleigh quotient of v = A^(2^squarings) 1 (repeated squaring, normalized each time):
    a power iteration of 2^squarings steps in `squarings` products. Exact for a dominant
    eigenvalue well separated from the next; never above the true value.
    """
    B = A
    for _ in range(squarings):
        B = B @ B
        B = B / _frobenius(B)
    v = B.sum(dim=-1, keepdim=True)  # B 1
    v = v / v.square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(torch.finfo(A.dtype).tiny)
    return (v.transpose(-2, -1) @ A @ v)[..., 0, 0]


def svt_gain(G: Tensor, tau: Tensor | float, sign_iterations: int = SIGN_ITERATIONS,
             inv_sqrt_iterations: int = INV_SQRT_ITERATIONS) -> tuple[Tensor, Tensor]:
    """g(G) = I - tau M^{-1/2}, M = max(G, tau^2 I), of the Gram embedding G (N, 2T, 2T): its real
    and imaginary parts (N, T, T), so that SVT_tau(Z) = Z g(G). `tau` (N,) or a float, >= 0; the
    Newton-Schulz iteration counts default to the accurate ones (a student network may train with fewer)."""
    T = G.shape[-1] // 2
    eye = torch.eye(2 * T, dtype=G.dtype, device=G.device)
    tau = as_threshold(tau, G).reshape(-1, 1, 1)
    shifted = G - tau.square() * eye
    M = 0.5 * (G + tau.square() * eye + shifted @ matrix_sign(shifted, sign_iterations))  # max(G, tau^2 I)
    g = eye - tau * inverse_sqrt(M, inv_sqrt_iterations)
    return g[..., :T, :T], g[..., T:, :T]  # g(G) = gr + i gi from its embedding


def svt_from_gram(Zr: Tensor, Zi: Tensor, tau: Tensor | float,
                  G: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """SVT_tau(Zr + i Zi) = Z (I - tau M^{-1/2}), M = max(G, tau^2 I); returns (real, imag) (N, M, T).

    `tau` (N,) or a float, >= 0. `G` is the Gram embedding when already computed (the
    caller may have needed it for the threshold). See the module docstring.
    """
    if G is None:
        G = gram_embedding(Zr, Zi)
    gr, gi = svt_gain(G, tau)
    return Zr @ gr - Zi @ gi, Zr @ gi + Zi @ gr


def frames_gram_embedding(Y: Tensor) -> Tensor:
    """The Gram embedding (N, 2T, 2T) of a window stored frame-major, Y (N, 2T, M) with rows
    (frame t, I/Q c) at 2t + c: Y is the transposed Casorati matrix, so one product Y Y^T
    holds every block (no transpose of the large data)."""
    N, T2 = Y.shape[0], Y.shape[1]
    P = (Y @ Y.transpose(-2, -1)).reshape(N, T2 // 2, 2, T2 // 2, 2)  # [t, c, s, d] = X_c[t] . X_d[s]
    Gr = P[:, :, 0, :, 0] + P[:, :, 1, :, 1]  # Re(Z^H Z)[t, s]
    Gi = P[:, :, 0, :, 1] - P[:, :, 1, :, 0]  # Im(Z^H Z)[t, s]
    return torch.cat([torch.cat([Gr, -Gi], dim=-1), torch.cat([Gi, Gr], dim=-1)], dim=-2)


def frames_apply_gain(Y: Tensor, gr: Tensor, gi: Tensor) -> Tensor:
    """Z g for a frame-major window Y (N, 2T, M) (see frames_gram_embedding), as frame-major:
    row (t, I) = sum_s gr[s, t] X_r[s] - gi[s, t] X_i[s], row (t, Q) = sum_s gi[s, t] X_r[s] +
    gr[s, t] X_i[s]; one (2T x 2T) (2T x M) product."""
    N, T = gr.shape[0], gr.shape[-1]
    grT, giT = gr.transpose(-2, -1), gi.transpose(-2, -1)
    A = torch.stack([torch.stack([grT, -giT], dim=-1), torch.stack([giT, grT], dim=-1)], dim=2)
    return A.reshape(N, 2 * T, 2 * T) @ Y
