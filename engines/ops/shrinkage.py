"""Shrinkage operators: the proximal maps of the sparsity and low-rank priors.

Each is prox_{tau g}(z) = argmin_y tau g(y) + 0.5 ||y - z||^2 (seed eq. (13)) for one
regularizer g, written in closed form, batch-first and differentiable in both the input
and the threshold (learned thresholds train through them):

    soft_threshold        g = ||.||_1       T_theta(z) = sign(z) max(|z| - theta, 0)   (seed Ex. 10)
    svt                   g = ||.||_*       U diag(T_tau(sigma)) V^H                   (RPCA / CORONA)
    mixed_l12_shrinkage   g = sum_i ||Z_i||_2   Z_i max(1 - tau / ||Z_i||_2, 0), row-wise   (CORONA)
    support_selection     soft threshold except on the largest q of the entries (LISTA-CPSS)

Complex inputs (ultrasound I/Q) are handled with sign(z) = z / |z|.
"""

from __future__ import annotations

import torch
from torch import Tensor


def soft_threshold(z: Tensor, theta: Tensor | float) -> Tensor:
    """T_theta(z) = sign(z) max(|z| - theta, 0), element-wise; theta broadcasts against z.

    The prox of theta ||.||_1 (seed Example 10). For complex z, sign(z) = z / |z|.
    """
    return torch.sgn(z) * torch.relu(z.abs() - theta)


def svt(Z: Tensor, tau: Tensor | float) -> Tensor:
    """Singular value thresholding U diag(max(sigma - tau, 0)) V^H of matrices Z (..., M, T).

    The prox of tau ||.||_* (nuclear norm); real or complex. tau broadcasts against the
    singular values (..., min(M, T)), e.g. a (..., 1) tensor of per-matrix thresholds.
    """
    U, sigma, Vh = torch.linalg.svd(Z, full_matrices=False)
    sigma = torch.relu(sigma - tau).to(U.dtype)
    return (U * sigma.unsqueeze(-2)) @ Vh


def mixed_l12_shrinkage(Z: Tensor, tau: Tensor | float) -> Tensor:
    """Row-wise shrinkage Z_i max(1 - tau / ||Z_i||_2, 0) of Z (..., M, T), rows along the last axis.

    The prox of tau ||Z||_{1,2} = tau sum_i ||Z_i||_2: a row (one pixel's time series in
    a Casorati matrix) is kept and shrunk as a whole or zeroed as a whole. A zero row
    stays zero (no 0/0).
    """
    norm = torch.linalg.vector_norm(Z, dim=-1, keepdim=True)
    return Z * (torch.relu(norm - tau) / norm.clamp_min(torch.finfo(norm.dtype).tiny))


def support_selection(z: Tensor, theta: Tensor | float, q: float) -> Tensor:
    """Soft threshold z (N, n) except where an entry is among the round(q n) largest in
    magnitude of its row and above theta: there it passes unchanged.

    The "support selection" shrinkage of LISTA-CPSS (Chen et al., NeurIPS 2018): entries
    trusted to be in the support skip the bias of the shrinkage. q is a fraction
    (0.012 = 1.2 %); q = 0 is the plain soft threshold. The selection itself carries no
    gradient; the values do.
    """
    k = round(q * int(z.shape[-1]))
    shrunk = soft_threshold(z, theta)
    if k == 0:
        return shrunk
    magnitude = z.abs()
    # a float mask scattered out of place: the ONNX tracer cannot export a scatter of a bool
    top = torch.zeros_like(magnitude).scatter(-1, magnitude.topk(k, dim=-1).indices, 1.0).bool()
    return torch.where(top & (magnitude > theta), z, shrunk)
