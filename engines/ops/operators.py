"""Linear operators with their adjoints, as torch modules: the H of seed eq. (3).

An operator maps a batch (N, *in_shape) to (N, *out_shape): `A(s)` = A s and
`A.adjoint(x)` = `A.T(x)` = A' x (A^H for complex data). Solvers that only need A and
A' (ISTA, FISTA, the power iteration) never form the matrix; `matrix()` forms it for
small problems and tests. The operator's data are buffers, so `.double()` and `.to()`
move them with the module that holds the operator.

    MatrixOperator   A s = H s for a dense H (m, n)
    Convolution2d    A s = k * s, each (h, w) image convolved with the kernel k, same size,
                     zero boundary (a blur by a point-spread function)
    BlurDownsample   A s = D_f (k * s): blur, then keep every f-th pixel in each direction
                     (super-resolution, seed Example 5: x = H s + w, eq. (3))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LinearOperator(nn.Module):
    """A linear map A: (N, *in_shape) -> (N, *out_shape) with its adjoint.

    Subclasses set `in_shape`, `out_shape` and implement `forward` (A s) and `adjoint` (A' x).
    """

    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def forward(self, s: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def T(self) -> LinearOperator:
        """The adjoint A' as an operator: `A.T(x)` = `A.adjoint(x)`."""
        return Adjoint(self)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the operator's data; inputs must match it."""
        return next(self.buffers()).dtype

    def matrix(self) -> Tensor:
        """The dense matrix (prod(out_shape), prod(in_shape)), column j = A e_j."""
        n = math.prod(self.in_shape)
        basis = torch.eye(n, dtype=self.dtype).reshape(n, *self.in_shape)
        return self(basis).reshape(n, -1).mT


class Adjoint(LinearOperator):
    """The adjoint A' of an operator A: forward = A.adjoint, adjoint = A."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__()
        self.op = op
        self.in_shape, self.out_shape = op.out_shape, op.in_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.op.adjoint(x)

    def adjoint(self, s: Tensor) -> Tensor:
        return self.op(s)

    @property
    def T(self) -> LinearOperator:
        return self.op


class MatrixOperator(LinearOperator):
    """A s = H s for a dense matrix H (m, n), real or complex; s (N, n) -> (N, m)."""

    H: Tensor

    def __init__(self, H: Tensor) -> None:
        super().__init__()
        if H.ndim != 2:
            raise ValueError(f"H must be a matrix (m, n), got shape {tuple(H.shape)}")
        self.register_buffer("H", H)
        self.out_shape, self.in_shape = (H.shape[0],), (H.shape[1],)

    def forward(self, s: Tensor) -> Tensor:
        return s @ self.H.mT  # H s, batch-first

    def adjoint(self, x: Tensor) -> Tensor:
        return x @ self.H.conj()  # H' x  (H^H x for complex H)

    def matrix(self) -> Tensor:
        return self.H


def as_operator(H: Tensor | LinearOperator) -> LinearOperator:
    """H itself if it is an operator, else the MatrixOperator of the dense matrix H."""
    return H if isinstance(H, LinearOperator) else MatrixOperator(H)


class Convolution2d(LinearOperator):
    """A s = k * s: 2-D convolution of each image s (N, h, w) with `kernel` (kh, kw).

    "Same" size with a zero boundary: out[i, j] = sum_{a,b} k[a, b] s[i - a + kh//2, j - b + kw//2]
    (a true convolution, centred at (kh//2, kw//2); for an odd symmetric PSF it equals
    scipy.signal.convolve2d(..., mode="same")). Real data. The adjoint is the correlation
    with k over the same zero boundary, i.e. conv_transpose2d followed by a crop.
    """

    kernel: Tensor

    def __init__(self, kernel: Tensor, image_shape: tuple[int, int]) -> None:
        super().__init__()
        if kernel.ndim != 2:
            raise ValueError(f"kernel must be 2-D (kh, kw), got shape {tuple(kernel.shape)}")
        h, w = (int(v) for v in image_shape)
        if h < 1 or w < 1:
            raise ValueError(f"image_shape must be positive (h, w), got {image_shape}")
        kh, kw = kernel.shape
        # conv2d correlates: a flipped kernel makes it a convolution centred at (kh//2, kw//2)
        self.register_buffer("kernel", kernel.flip(0, 1).reshape(1, 1, kh, kw))
        # zero padding (left, right, top, bottom) around the image before a "valid" correlation
        self._pad = (kw - 1 - kw // 2, kw // 2, kh - 1 - kh // 2, kh // 2)
        self.factor = 1
        self.in_shape = self.out_shape = (h, w)

    def forward(self, s: Tensor) -> Tensor:
        N = s.shape[0]
        y = F.conv2d(F.pad(s.reshape(N, 1, *self.in_shape), self._pad), self.kernel, stride=self.factor)
        return y.reshape(N, *self.out_shape)

    def adjoint(self, x: Tensor) -> Tensor:
        N = x.shape[0]
        h, w = self.in_shape
        # conv_transpose2d is the exact adjoint of the strided "valid" correlation; output_padding
        # restores the padded size when the stride does not divide it, the crop undoes the padding
        extra = (h - 1 - (self.out_shape[0] - 1) * self.factor, w - 1 - (self.out_shape[1] - 1) * self.factor)
        z = F.conv_transpose2d(x.reshape(N, 1, *self.out_shape), self.kernel, stride=self.factor,
                               output_padding=extra)
        left, _, top, _ = self._pad
        return z[:, 0, top : top + h, left : left + w]


class BlurDownsample(Convolution2d):
    """A s = D_f (k * s): blur by the PSF k, keep pixels (f i, f j); (N, h, w) -> (N, ceil(h/f), ceil(w/f)).

    The super-resolution measurement of seed Example 5 (x = H s + w, eq. (3)): a fine
    grid s seen through the system's PSF on a grid f times coarser.
    """

    def __init__(self, kernel: Tensor, image_shape: tuple[int, int], factor: int) -> None:
        super().__init__(kernel, image_shape)
        if factor < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        h, w = self.in_shape
        self.factor = int(factor)
        self.out_shape = (-(-h // self.factor), -(-w // self.factor))
