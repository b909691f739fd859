"""The one recursion of seed Fig. 9: forward-backward on the trellis of a channel with memory.

Factor graph (Shlezinger et al., "Learned factor graphs for inference from stationary time
sequences", IEEE TSP 2022, sec. III; ViterbiNet, IEEE TWC 2020): the state at time i is the
window of the last L symbols, c_i = (s_i, s_{i-1}, ..., s_{i-L+1}) (2^L = 16 states for L = 4);
y_i depends on c_i only, and c_i follows c_{i-1} by shifting in s_i, so

    p(y, c) = prod_i f_i(c_i) T(c_i | c_{i-1}),    f_i(c) = p(y_i | c)   (the function nodes).

Sum-product (BCJR) computes the forward and backward messages

    alpha_i(c) = f_i(c) sum_{c'} T(c | c') alpha_{i-1}(c')
    beta_i(c') = sum_c T(c | c') f_{i+1}(c) beta_{i+1}(c),       beta_{B-1} = 1,

and the symbol-wise MAP decision from gamma_i(c) = alpha_i(c) beta_i(c):
    P(s_i = a | y) ∝ sum_{c: newest symbol of c = a} gamma_i(c).
Max-product (Viterbi) is the same recursion with max in place of sum: gamma_i(c) is then the
probability of the best sequence through c at i (a max-marginal), whose argmax over the
newest symbol is the Viterbi sequence's symbol (max-log-MAP).

The family's spectrum (ARCHITECTURE.md, "One family, one step"): `forward_backward` is the
step; a detector differs only in its factor source. Model-based: f from the channel model
(`ChannelFactors`: AWGN or Poisson, taps known, or perturbed for CSI uncertainty).
Learned factor graph: f from a classifier (engines/comms/learned_factor_graph.py).

Numerics. Messages are kept in the linear domain with scaling (each message and each factor
divided by its maximum; the factors arrive as log f and are shifted by their per-symbol
maximum before exp, so no factor overflows and the best state's factor is 1). That is the
log-domain recursion up to a per-step constant, and it lets the block be split in time:
the block's B steps run as C chunks of K ~ sqrt(B) steps, the chunks in parallel, their
boundary messages from the products of each chunk's K transition matrices (16 x 16) --
exact, and 3K + 2C Python steps for both directions instead of 2B (a 500-symbol block: 111
instead of 1,000). Measured on one core: 1.8 ms per block with its factors (a sequential
log-domain loop: 2.6 ms per direction). A large batch (N > CHUNKED_MAX_N) runs sequentially:
there the arithmetic, not Python, is the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from scipy.special import gammaln

from engines.base import EngineInfo, Estimate, check_finite
from engines.errors import BackendUnavailable, EngineError, EngineInputError

Semiring = Literal["sum", "max"]
SEMIRINGS = ("sum", "max")
CHUNKED_MAX_N = 16  # up to this many blocks per call the time axis is split into chunks
_FLOOR = 1e-280  # a factor below this (relative to the best state's) is an impossible state


@dataclass(frozen=True)
class Trellis:
    """The 2^L states of a binary channel with memory L.

    State c encodes the window (s_i, ..., s_{i-L+1}): bit l of c is the bit of s_{i-l}, and
    symbol = alphabet[bit]. pred[k, c]: the two states c' that lead to c (k = the bit of
    s_{i-L} that leaves the window); succ[j, c']: the two states c' leads to (j = the bit
    of the new symbol s_{i+1}); symbols[c, l] = s_{i-l} in state c; newest[c] = bit of s_i.
    """

    memory: int
    alphabet: tuple[float, float] = (-1.0, 1.0)
    pred: np.ndarray = field(init=False, repr=False)
    succ: np.ndarray = field(init=False, repr=False)
    symbols: np.ndarray = field(init=False, repr=False)
    newest: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.memory <= 8:
            raise ValueError(f"memory must be within 1..8 symbols, got {self.memory}")
        S, L = 2**self.memory, self.memory
        c = np.arange(S)
        object.__setattr__(self, "pred", np.stack([c >> 1, (c >> 1) | (1 << (L - 1))]))
        object.__setattr__(self, "succ", np.stack([(c << 1) & (S - 1), ((c << 1) & (S - 1)) | 1]))
        bits = (c[:, None] >> np.arange(L)) & 1
        object.__setattr__(self, "symbols", np.asarray(self.alphabet)[bits])
        object.__setattr__(self, "newest", c & 1)

    @property
    def states(self) -> int:
        return 2**self.memory

    def allowed(self) -> np.ndarray:
        """(S, S) bool: whether c' -> c is a transition of the trellis (two per row)."""
        A = np.zeros((self.states, self.states), dtype=bool)
        A[self.pred, np.arange(self.states)] = True
        return A

    def uniform_log_transition(self) -> np.ndarray:
        """log T(c | c') (S, S) for i.i.d. uniform symbols: log 1/2 where allowed, -inf elsewhere."""
        return np.where(self.allowed(), math.log(0.5), -np.inf)

    def bits(self, s: np.ndarray) -> np.ndarray:
        """The bit of each symbol (0 for alphabet[0], 1 for alphabet[1]); (...) int64."""
        return (np.asarray(s) == self.alphabet[1]).astype(np.int64)

    def states_of(self, s: np.ndarray) -> np.ndarray:
        """The state at every position i >= L - 1 of symbol sequences s (..., n): (..., n - L + 1)."""
        b = self.bits(s)
        n = b.shape[-1] - self.memory + 1
        return sum(b[..., self.memory - 1 - l:self.memory - 1 - l + n] << l for l in range(self.memory))


def forward_backward(log_f: np.ndarray, trellis: Trellis, log_T: np.ndarray,
                     alpha0: np.ndarray | None = None, semiring: Semiring = "sum",
                     chunk: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum-product (BCJR) or max-product (Viterbi) over blocks (see the module docstring).

    log_f: (N, B, S) log factors log f_i(c) (any per-symbol constant may be added);
    log_T: (S, S) log T(c | c') (-inf where not allowed); alpha0: (N, S) the forward message
    entering the block, in the linear domain up to scale (None: uniform); chunk: steps per
    chunk (None: ~sqrt(B) for small batches, B otherwise). Returns (llr (N, B), alpha (N, S)):
    llr_i = log P(s_i = alphabet[1] | y) / P(s_i = alphabet[0] | y) (for "max": the max-log
    ratio), and the forward message at the block's last symbol, scaled to max 1 (the next
    block's alpha0 on a continuous stream).
    """
    if semiring not in SEMIRINGS:
        raise ValueError(f"semiring must be one of {', '.join(SEMIRINGS)}, got {semiring!r}")
    N, B, S = log_f.shape
    reduce = (np.add if semiring == "sum" else np.maximum).reduce  # the ufunc's own: no wrapper overhead
    F = np.maximum(np.exp(log_f - log_f.max(-1, keepdims=True)), _FLOOR)
    T = np.exp(log_T)
    Tp = T[trellis.pred, np.arange(S)]  # T(c | pred_k(c)), (2, S)
    Ts = T[np.arange(S)[None], trellis.succ]  # T(succ_j(c') | c'), (2, S)
    a0 = np.ones((N, S)) if alpha0 is None else np.asarray(alpha0, dtype=np.float64)
    K = chunk or (max(1, math.ceil(math.sqrt(B))) if N <= CHUNKED_MAX_N else B)
    C = -(-B // K)
    pad = C * K - B  # the last chunk's last `pad` steps are padding (factors 1, skipped backward)
    if pad:  # the forward messages over the real symbols are unchanged; the backward message starts
        # at the block's last symbol, B - 1: a padded step must not pass it through T, whose max over
        # c (max-product) is not constant when T is not uniform (a learned T: label statistics)
        F = np.concatenate((F, np.ones((N, pad, S))), axis=1)
    F = F.reshape(N, C, K, S)

    def forward(a: np.ndarray, f: np.ndarray) -> np.ndarray:
        """a M_i: f(c) (+)_k T(c | pred_k(c)) a(pred_k(c)), scaled to max 1 (a: (..., S))."""
        a = reduce(a[..., trellis.pred] * Tp, axis=-2) * f
        return a / np.maximum.reduce(a, axis=-1, keepdims=True)

    def backward(b: np.ndarray, f: np.ndarray) -> np.ndarray:
        """M_i b: (+)_j T(succ_j(c') | c') f(succ_j(c')) b(succ_j(c')), scaled to max 1."""
        g = f * b
        b = reduce(g[..., trellis.succ] * Ts, axis=-2)
        return b / np.maximum.reduce(b, axis=-1, keepdims=True)

    a_in = np.empty((N, C, S))  # the forward message entering each chunk
    b_out = np.ones((N, C, S))  # the backward message at each chunk's last symbol
    a_in[:, 0] = a0
    if C > 1:
        # P_c = M_{cK} ... M_{cK+K-1}, each row a forward message through the chunk
        P = np.broadcast_to(np.eye(S), (N, C, S, S)).copy()
        for k in range(K):
            last = P[:, C - 1].copy() if k >= K - pad else None
            P = reduce(P[..., trellis.pred] * Tp, axis=-2) * F[:, :, k, None, :]
            P /= P.max((-2, -1), keepdims=True)
            if last is not None:  # a padded step: the last chunk's product ends at B - 1
                P[:, C - 1] = last
        a = a_in[:, 0]
        for c in range(C - 1):  # alpha at the end of chunk c = alpha entering it times P_c
            a = reduce(a[:, :, None] * P[:, c], axis=-2)
            a_in[:, c + 1] = a = a / a.max(-1, keepdims=True)
        b = b_out[:, C - 1]
        for c in range(C - 1, 0, -1):  # beta before chunk c = P_c beta at its end
            b = reduce(P[:, c] * b[:, None, :], axis=-1)
            b_out[:, c - 1] = b = b / b.max(-1, keepdims=True)
    alpha, beta = np.empty((N, C, K, S)), np.empty((N, C, K, S))
    a, b = a_in, b_out
    for k in range(K):
        alpha[:, :, k] = a = forward(a, F[:, :, k])
    for k in range(K - 1, -1, -1):
        if pad and k == K - pad - 1:  # the block's last symbol: beta_{B-1} = 1
            b[:, C - 1] = 1.0
        beta[:, :, k] = b
        b = backward(b, F[:, :, k])
    gamma = (alpha * beta).reshape(N, C * K, S)[:, :B]
    one = trellis.newest.astype(bool)
    with np.errstate(divide="ignore"):
        llr = np.log(reduce(gamma[..., one], axis=-1)) - np.log(reduce(gamma[..., ~one], axis=-1))
    return llr, alpha.reshape(N, C * K, S)[:, B - 1].copy()


def soft_symbols(llr: np.ndarray, alphabet: tuple[float, float]) -> np.ndarray:
    """E[s | y] = a0 + (a1 - a0) P(s = a1 | y) from llr = log P(a1) / P(a0) (for max-product: the
    same map of the max-log ratio); the decision is the alphabet symbol nearest to it."""
    a0, a1 = alphabet
    return a0 + (a1 - a0) / (1.0 + np.exp(-np.clip(llr, -700.0, 700.0)))


def decisions(soft: np.ndarray, alphabet: tuple[float, float]) -> np.ndarray:
    """The nearest alphabet symbol to each soft estimate (a tie goes to alphabet[1])."""
    a0, a1 = alphabet
    return np.where(soft >= 0.5 * (a0 + a1), a1, a0)


def symbol_error_rate(soft: np.ndarray, truth: np.ndarray, alphabet: tuple[float, float]) -> float:
    """The fraction of symbols whose decision differs from the transmitted symbol."""
    return float(np.mean(decisions(np.asarray(soft), alphabet) != np.asarray(truth)))


class FactorSource(Protocol):
    """Where a trellis detector's function nodes come from.

    `log_likelihood(y)` maps received blocks y (N, B) float64 to log f_i(c) = log p(y_i | c)
    (N, B, S) (up to a per-symbol constant); `reset()` restarts any randomness or state.
    """

    def log_likelihood(self, y: np.ndarray) -> np.ndarray: ...

    def reset(self) -> None: ...


class ChannelFactors:
    """f_i(c) = p(y_i | c) from the channel model (seed Fig. 9's model-based SP).

    AWGN: log p(y | c) = -(y - mu_c)^2 / (2 sigma^2) + const, mu_c = sum_l h_l s_{i-l+1}(c),
    sigma^2 = 10^(-SNR/10). Poisson: log p(y | c) = y log lambda_c - lambda_c - log y!,
    lambda_c = sqrt(SNR) mu_c + 1 (SNR linear).
    CSI uncertainty (`csi_error` = sigma_e^2 > 0): each block's factors use the estimate
    h_l (1 + sigma_e n_l), n_l ~ N(0, 1) drawn per block (ANCHORS.md: sigma_e^2 = 0.1 per
    500-symbol frame) -- the seed's dashed "CSI uncertainty" curves.
    """

    def __init__(self, trellis: Trellis, taps, snr_db: float, channel: str = "awgn",
                 csi_error: float = 0.0, seed: int = 0) -> None:
        self.trellis = trellis
        self.taps = np.asarray(taps, dtype=np.float64)
        if self.taps.shape != (trellis.memory,) or not np.isfinite(self.taps).all():
            raise ValueError(f"taps must be {trellis.memory} finite numbers (the memory), got {taps}")
        if channel not in ("awgn", "poisson"):
            raise ValueError(f"channel must be awgn or poisson, got {channel!r}")
        if not (csi_error >= 0 and math.isfinite(csi_error)) or not math.isfinite(snr_db):
            raise ValueError(f"csi_error must be >= 0 and snr_db finite, got {csi_error}, {snr_db}")
        self.snr_db, self.channel, self.csi_error, self.seed = float(snr_db), channel, float(csi_error), seed
        self.sigma2 = 10.0 ** (-self.snr_db / 10.0)
        self.reset()

    def reset(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def block_taps(self, n: int) -> np.ndarray:
        """The taps used for the next n blocks (n, L): the true ones, or perturbed estimates."""
        h = np.broadcast_to(self.taps, (n, self.trellis.memory))
        if self.csi_error == 0:
            return h
        return h * (1.0 + math.sqrt(self.csi_error) * self._rng.standard_normal(h.shape))

    def log_likelihood(self, y: np.ndarray) -> np.ndarray:
        mu = self.block_taps(len(y)) @ self.trellis.symbols.T  # (N, S)
        y = y[..., None]
        if self.channel == "awgn":
            return -((y - mu[:, None, :]) ** 2) / (2.0 * self.sigma2)
        lam = np.maximum(math.sqrt(10.0 ** (self.snr_db / 10.0)) * mu[:, None, :] + 1.0, 1e-12)
        return y * np.log(lam) - lam - gammaln(y + 1.0)


class TrellisDetector:
    """A symbol detector on a block stream: the forward-backward recursion around a factor source.

    Follows the TrackerEngine contract (engines/base.py): a block detector on a continuous
    stream is a filter whose state is the forward message alpha, the distribution of the
    channel state at the end of the last block, carried into the next block as a Kalman
    filter carries (x, P). `reset(n)` starts n streams with a uniform state. `step(y)` takes
    blocks y (n, B) of received samples and returns Estimate(mean = the soft symbols
    E[s_i | y] (n, B) for sum-product, the max-log analogue for max-product; cov None).
    The decision is the alphabet symbol nearest to the mean (`decisions`). Raises
    EngineInputError on a wrong block length or non-finite y, EngineError if the factors turn
    non-finite; either way the state is unchanged.
    """

    def __init__(self, info: EngineInfo, factors: FactorSource, trellis: Trellis, log_T: np.ndarray,
                 semiring: Semiring = "sum") -> None:
        if semiring not in SEMIRINGS:
            raise ValueError(f"semiring must be one of {', '.join(SEMIRINGS)}, got {semiring!r}")
        self.info, self.factors, self.trellis, self.semiring = info, factors, trellis, semiring
        self.log_T = np.asarray(log_T, dtype=np.float64)
        self.alphabet = trellis.alphabet
        self.block = info.in_shape[0]
        self.reset(1)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        """n streams, each from a uniform channel state; z0 (a prior state) is not supported."""
        if n < 1:
            raise EngineInputError(f"{self.info.name}: need n >= 1 streams, got {n}")
        if z0 is not None:
            raise EngineInputError(f"{self.info.name}: takes no initial state z0 (it starts from "
                                   "a uniform channel state)")
        self.alpha = np.ones((n, self.trellis.states))
        self.n = n
        self.factors.reset()

    def checked(self, y: np.ndarray) -> np.ndarray:
        """y as float64 (n, B); EngineInputError naming the engine otherwise."""
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.block):
            raise EngineInputError(f"{self.info.name}: expected blocks y of shape ({self.n}, {self.block}) "
                                   f"(block length {self.block}), got {y.shape}")
        check_finite(self.info.name, y)
        return y

    def step(self, y: np.ndarray) -> Estimate:
        """Detect one block per stream: y (n, B) -> Estimate(mean (n, B) soft symbols)."""
        y = self.checked(y)
        log_f = self.factors.log_likelihood(y)
        if not np.isfinite(log_f.max(-1)).all():
            raise EngineError(f"{self.info.name}: the factors became non-finite; the state is unchanged")
        llr, self.alpha = forward_backward(log_f, self.trellis, self.log_T, self.alpha, self.semiring)
        return Estimate(mean=soft_symbols(llr, self.alphabet), cov=None)


def _model_based(name: str, semiring: Semiring, memory: int, gamma: float, taps, snr_db: float,
                 channel: str, block: int, csi_error: float, seed: int, backend: str) -> TrellisDetector:
    if backend not in ("auto", "numpy"):
        raise BackendUnavailable(f"{name}: runs on numpy, not {backend!r}")
    if block < 1:
        raise ValueError(f"block must be >= 1 symbols, got {block}")
    alphabet = {"awgn": (-1.0, 1.0), "poisson": (0.0, 1.0)}.get(channel)
    if alphabet is None:
        raise ValueError(f"channel must be awgn or poisson, got {channel!r}")
    trellis = Trellis(memory, alphabet)
    h = np.exp(-gamma * np.arange(memory)) if taps is None else np.asarray(taps, dtype=np.float64)
    info = EngineInfo(name=name, family="model-based", task="symbol-detection", backend="numpy", window=1,
                      in_shape=(block,), out_shape=(block,), n_params=0)
    return TrellisDetector(info, ChannelFactors(trellis, h, snr_db, channel, csi_error, seed), trellis,
                           trellis.uniform_log_transition(), semiring)


def build_bcjr(*, memory: int = 4, gamma: float = 0.2, taps: list[float] | None = None, snr_db: float = 8.0,
               channel: str = "awgn", block: int = 500, csi_error: float = 0.0, seed: int = 0,
               backend: str = "auto") -> TrellisDetector:
    """Model-based sum-product (BCJR): symbol-wise MAP on the channel with taps `taps` (else
    exp(-gamma (l - 1))) at `snr_db`; `csi_error` > 0: perturbed taps per block (CSI uncertainty)."""
    return _model_based("bcjr", "sum", memory, gamma, taps, snr_db, channel, block, csi_error, seed, backend)


def build_viterbi(*, memory: int = 4, gamma: float = 0.2, taps: list[float] | None = None,
                  snr_db: float = 8.0, channel: str = "awgn", block: int = 500, csi_error: float = 0.0,
                  seed: int = 0, backend: str = "auto") -> TrellisDetector:
    """Model-based max-product (Viterbi): the MAP sequence's symbols; parameters as build_bcjr."""
    return _model_based("viterbi", "max", memory, gamma, taps, snr_db, channel, block, csi_error, seed,
                        backend)

