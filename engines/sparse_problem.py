"""The sparse-coding task: the standard LISTA benchmark problem, its metric, and the Engine
adapter around any torch module that solves it.

Benchmark (ANCHORS "Sparse recovery / LISTA family"; Chen et al. NeurIPS 2018, Liu et
al. ICLR 2019): H 250 x 500 with i.i.d. N(0, 1/250) entries and unit-norm columns, one
matrix fixed by a seed; codes s with a Bernoulli(0.1) support and N(0, 1) magnitudes;
observations x = H s + w, noiseless or at an SNR with noise std = std(H s) 10^(-SNR/20)
per sample. Names follow the seed (x = H s + w, eq. (3)): the LISTA papers' A, x, b are
our H, s, x. Metric: NMSE dB = 10 log10(sum ||s_hat - s||^2 / sum ||s||^2) over the set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from engines.base import EngineInfo, Family, check_finite
from engines.errors import EngineError, EngineInputError


def sensing_matrix(m: int = 250, n: int = 500, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """H (m, n): i.i.d. N(0, 1/m) entries, then each column scaled to unit l2 norm.

    Drawn in float64 from a torch generator seeded with `seed` (the same seed gives the
    same H on every machine and dtype), then cast to `dtype`.
    """
    if m < 1 or n < 1:
        raise ValueError(f"need m, n >= 1, got m={m}, n={n}")
    generator = torch.Generator().manual_seed(seed)
    H = torch.randn(m, n, generator=generator, dtype=torch.float64) / math.sqrt(m)
    return (H / torch.linalg.vector_norm(H, dim=0, keepdim=True)).to(dtype)


@dataclass(frozen=True, slots=True)
class SparseBatch:
    """A batch of the task: true codes s (N, n) and their observations x = H s + w (N, m)."""

    s: Tensor
    x: Tensor


@dataclass(frozen=True, slots=True)
class SparseProblem:
    """x = H s + w with s Bernoulli(p)-Gaussian and w white at `snr_db` (None: noiseless)."""

    H: Tensor
    p: float = 0.1
    snr_db: float | None = None

    @classmethod
    def standard(cls, seed: int = 0, snr_db: float | None = None, m: int = 250, n: int = 500,
                 dtype: torch.dtype = torch.float64) -> SparseProblem:
        """The benchmark of the anchors: H = sensing_matrix(m, n, seed), p = 0.1."""
        return cls(H=sensing_matrix(m, n, seed, dtype), p=0.1, snr_db=snr_db)

    def sample(self, batch_size: int, generator: torch.Generator) -> SparseBatch:
        """N = batch_size draws of (s, x), reproducible from the generator's state."""
        m, n = self.H.shape
        dtype = self.H.dtype
        support = torch.rand(batch_size, n, generator=generator, dtype=dtype) < self.p
        s = torch.randn(batch_size, n, generator=generator, dtype=dtype) * support
        x = s @ self.H.mT  # H s
        if self.snr_db is not None:
            std = x.std(dim=1, keepdim=True, correction=0) * 10.0 ** (-self.snr_db / 20)
            x = x + std * torch.randn(batch_size, m, generator=generator, dtype=dtype)
        return SparseBatch(s=s, x=x)


def nmse_db(s_hat: Tensor, s: Tensor) -> float:
    """10 log10(sum ||s_hat - s||^2 / sum ||s||^2) over the batch (the anchors' NMSE).

    The ratio of totals, as the reference implementations compute it: a (rare) all-zero
    code cannot divide by zero.
    """
    return float(10 * torch.log10(((s_hat - s) ** 2).sum() / (s**2).sum()))


class SparseCodingEngine:
    """Engine: observations x (N, m) -> sparse codes s (N, n), by a torch solver module.

    `module(x)` maps a (N, m) tensor of its dtype to (N, n); it is run in inference mode
    on the calling (worker) thread. Input of any real dtype is cast to the module's;
    the output is float32. `operator` is the sensing matrix H (m, n) the engine assumes,
    so a simulator can generate matched data. Raises EngineInputError on a wrong shape
    or a non-finite input, EngineError if the solution is non-finite.
    """

    def __init__(self, name: str, family: Family, module: nn.Module, operator: np.ndarray,
                 dtype: torch.dtype = torch.float32) -> None:
        m, n = operator.shape
        self.module = module.to(dtype).eval()
        self.operator = operator
        self._dtype = dtype
        self.info = EngineInfo(
            name=name, family=family, task="sparse-coding", backend="torch", window=1,
            in_shape=(m,), out_shape=(n,),
            n_params=sum(p.numel() for p in module.parameters() if p.requires_grad),
        )

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1:] != self.info.in_shape:
            raise EngineInputError(f"{self.info.name}: expected observations (N, {self.info.in_shape[0]}), "
                                   f"got {x.shape}")
        check_finite(self.info.name, x)
        with torch.inference_mode():
            s = self.module(torch.as_tensor(x, dtype=self._dtype))
        out = s.to(torch.float32).numpy()
        if not np.isfinite(out).all():
            raise EngineError(f"{self.info.name}: the solution became non-finite")
        return out
