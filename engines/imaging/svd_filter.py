"""The clinical SVD clutter filter for contrast-enhanced ultrasound.

Stack a window of T complex I/Q frames as the (H*W) x T Casorati matrix D and drop
its k largest singular components, which hold the slowly varying tissue clutter:

    D = U diag(sigma) V^H,   S = D - sum_{i<=k} sigma_i u_i v_i^H = D (I - V_k V_k^H)

Computed through the T x T Gram matrix G = D^H D = V diag(sigma^2) V^H (an eigh of a
20 x 20 matrix instead of an SVD of a 16384 x 20 one); only the columns asked for
are formed. Source: Solomon et al., IEEE TMI 2019 (the baseline of seed Fig. 6).
"""

from __future__ import annotations

import numpy as np

from engines.base import EngineInfo, check_finite
from engines.errors import BackendUnavailable, EngineInputError


def iq_to_complex(x: np.ndarray) -> np.ndarray:
    """(..., 2, H, W) float I/Q -> (..., H, W) complex64."""
    return (x[..., 0, :, :] + 1j * x[..., 1, :, :]).astype(np.complex64, copy=False)


def complex_to_iq(z: np.ndarray) -> np.ndarray:
    """(..., H, W) complex -> (..., 2, H, W) float32 I/Q."""
    return np.stack([z.real, z.imag], axis=-3).astype(np.float32, copy=False)


def clutter_projector(D: np.ndarray, k: int) -> np.ndarray:
    """P = I - V_k V_k^H (N, T, T) for Casorati matrices D (N, H*W, T)."""
    G = np.matmul(D.conj().transpose(0, 2, 1), D).astype(np.complex128)  # G = D^H D
    _, V = np.linalg.eigh(G)  # eigenvalues ascending: the tissue lives in the last k
    Vk = V[:, :, V.shape[-1] - k :]
    T = D.shape[-1]
    return np.eye(T, dtype=np.complex128)[None] - np.matmul(Vk, Vk.conj().transpose(0, 2, 1))


class SVDFilter:
    """Engine: drop the k largest singular components of each window.

    Input (N, T, 2, H, W) float32 I/Q; output (N, T, 2, H, W), every frame's blood/bubble
    signal (`output="all"`, the default), or (N, 1, 2, H, W), the newest frame's (`"last"`).
    """

    def __init__(self, k: int = 2, window: int = 20, output: str = "all") -> None:
        if not 0 <= k < window:
            raise ValueError(f"k must be in [0, window), got k={k}, window={window}")
        if output not in ("last", "all"):
            raise ValueError(f"output must be 'last' or 'all', got {output!r}")
        self.k, self.window, self.output = k, window, output
        t_out = 1 if output == "last" else window
        self.info = EngineInfo(
            name="svd-filter", family="model-based", task="clutter-suppression",
            backend="numpy", window=window, in_shape=(window, 2, -1, -1),
            out_shape=(t_out, 2, -1, -1), n_params=0,
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 5 or x.shape[1] != self.window or x.shape[2] != 2:
            raise EngineInputError(
                f"svd-filter: expected (N, {self.window}, 2, H, W) I/Q windows, got {x.shape}"
            )
        check_finite("svd-filter", x)
        N, T, _, H, W = x.shape
        z = iq_to_complex(x)  # (N, T, H, W)
        D = z.reshape(N, T, H * W).transpose(0, 2, 1)  # Casorati (N, HW, T)
        P = clutter_projector(D, self.k)
        cols = P[:, :, -1:] if self.output == "last" else P  # only the frames asked for
        S = np.matmul(D, cols.astype(np.complex64))  # (N, HW, T_out)
        S = S.transpose(0, 2, 1).reshape(N, -1, H, W)
        return complex_to_iq(S)


def build(*, backend: str = "auto", k: int = 2, window: int = 20, output: str = "all") -> SVDFilter:
    """engines.load("svd-filter", k=..., window=...): runs on numpy only."""
    if backend not in ("auto", "numpy"):
        raise BackendUnavailable(f"svd-filter: runs on numpy only, not {backend!r}")
    return SVDFilter(k=int(k), window=int(window), output=output)
