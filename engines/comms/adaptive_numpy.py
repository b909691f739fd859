"""Online adaptation of the learned factor graph in numpy (lfg-adaptive without torch, issue 18).

engines/comms/learned_factor_graph.py's `AdaptiveTrellisDetector` re-trains the classifier of
p(c | y) on each block's pilots before detecting the block; it is torch (autograd, Adam). Its
network is small (1 -> 100 -> 50 -> S, full-batch steps on the pilot samples, no randomness),
so the runtime install runs the same adaptation here: the factor node's forward, the cross
entropy's gradient by hand and Adam with torch's defaults (betas 0.9, 0.999, eps 1e-8), all in
float32 as torch trains. Detection is the same numpy trellis recursion (engines/comms/sum_product.py)
with these factors plugged in:

    log f_i(c) = log softmax(MLP((y_i - m) / s))_c + log p_GMM(y_i) - log p(c)

`build_adaptive` is the "lfg-adaptive" builder: the torch detector where torch is installed
("auto" / "torch"), this one on "numpy" or where torch is not installed.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from engines.base import EngineInfo, Estimate
from engines.comms.detectors import card_spec
from engines.comms.sum_product import Semiring, Trellis, TrellisDetector
from engines.errors import BackendUnavailable, EngineInputError
from engines.optional_torch import torch_installed

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b by numpy's own einsum loop, not BLAS: these products are small (at most 500 x 100 x 50)
    and OpenBLAS's thread pool hands each one to threads that a loaded 2-core machine cannot
    schedule: one adaptation + detection of a 500-symbol block took 40 ms median with `@`,
    8 ms with OPENBLAS_NUM_THREADS=1 (load average 6)."""
    return np.einsum("mk,kn->mn", a, b)


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis, keepdims=True))).squeeze(axis)


class NumpyFactors:
    """One learned function node (G = 1) from an artifact's weights (LearnedFactors' state dict)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        n = sum(1 for k in arrays if k.startswith("weights."))
        self.weights = [arrays[f"weights.{k}"][0].astype(np.float32) for k in range(n)]
        self.biases = [arrays[f"biases.{k}"][0, 0].astype(np.float32) for k in range(n)]
        self.y_mean, self.y_std = (arrays[k].reshape(()).astype(np.float32) for k in ("y_mean", "y_std"))
        self.log_prior = arrays["log_prior"][0].astype(np.float32)
        self.mix = tuple(arrays[k][0].astype(np.float32) for k in ("mix_log_weight", "mix_mean", "mix_var"))

    def params(self) -> list[np.ndarray]:
        return [*self.weights, *self.biases]

    def hidden(self, y: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """The layers' inputs (each (M, d_in)) and the logits (M, S) of samples y (M,)."""
        h = ((y.astype(np.float32) - self.y_mean) / self.y_std)[:, None]
        inputs, last = [], len(self.weights) - 1
        for k, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            inputs.append(h)
            h = _mm(h, W) + b
            if k < last:
                h = 1.0 / (1.0 + np.exp(-h)) if k == 0 else np.maximum(h, 0.0)
        return inputs, h

    def log_likelihood(self, y: np.ndarray) -> np.ndarray:
        """log p(y_i | c) (N, B, S) of blocks y (N, B)."""
        _, logits = self.hidden(y.reshape(-1))
        log_post = logits - _logsumexp(logits)[:, None]
        log_w, mean, var = self.mix
        d = y.reshape(-1).astype(np.float32)[:, None] - mean
        log_evidence = _logsumexp(log_w - 0.5 * (d * d / var + np.log(2 * math.pi * var)))
        out = log_post + log_evidence[:, None] - self.log_prior
        return out.reshape(*y.shape, -1).astype(np.float64)

    def gradients(self, y: np.ndarray, labels: np.ndarray) -> tuple[float, list[np.ndarray]]:
        """The mean cross entropy of the classifier on (y, c) pairs and its gradients (params' order)."""
        inputs, logits = self.hidden(y)
        M = len(y)
        p = np.exp(logits - _logsumexp(logits)[:, None])
        loss = float(np.mean(_logsumexp(logits) - logits[np.arange(M), labels]))
        g = p
        g[np.arange(M), labels] -= 1.0
        g /= M
        grads_w, grads_b = [], []
        for k in range(len(self.weights) - 1, -1, -1):
            grads_w.append(_mm(inputs[k].T, g))
            grads_b.append(g.sum(0))
            if k:
                g = _mm(g, self.weights[k].T)
                a = inputs[k]  # the activation of layer k - 1
                g = g * (a * (1.0 - a)) if k == 1 else g * (a > 0)
        return loss, [*grads_w[::-1], *grads_b[::-1]]

    def reset(self) -> None:
        """Nothing to restart: the factors are a fixed function of the block (between adaptations)."""


class Adam:
    """torch.optim.Adam (no weight decay, no amsgrad) on a list of float32 arrays, in place."""

    def __init__(self, params: list[np.ndarray], lr: float) -> None:
        self.params, self.lr, self.t = params, lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        b1, b2 = BETAS
        c1, c2 = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            p -= (self.lr / c1) * m / (np.sqrt(v) / c2 + EPS)


class NumpyAdaptiveDetector(TrellisDetector):
    """lfg-adaptive in numpy: `steps` full-batch Adam steps on the pilots of this block and the
    `window` - 1 before it, then the trellis recursion with the updated factors (as
    learned_factor_graph.AdaptiveTrellisDetector; `reset` restores the artifact's weights)."""

    def __init__(self, info: EngineInfo, arrays: dict[str, np.ndarray], trellis: Trellis, semiring: Semiring,
                 pilots: np.ndarray, steps: int = 5, lr: float = 5e-3, window: int = 2) -> None:
        pilots = np.asarray(pilots, dtype=np.float64)
        if len(pilots) and len(pilots) < trellis.memory:
            raise ValueError(f"need at least {trellis.memory} pilots (the memory) to adapt, "
                             f"got {len(pilots)}")
        if len(pilots) > info.in_shape[0]:
            raise ValueError(f"{len(pilots)} pilots do not fit a block of {info.in_shape[0]}")
        if not set(np.unique(pilots)) <= set(trellis.alphabet):
            raise ValueError(f"pilots must be symbols of the alphabet {trellis.alphabet}")
        self.arrays, self.pilots, self.steps, self.lr, self.window = arrays, pilots, steps, lr, window
        self.pilot_states = trellis.states_of(pilots) if len(pilots) else None
        self.adaptations = 0
        log_T = arrays["log_transition"][0].astype(np.float64)
        super().__init__(info, NumpyFactors(arrays), trellis, log_T, semiring)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        self.factors = NumpyFactors(self.arrays)
        self.optimizer = Adam(self.factors.params(), self.lr)
        self.recent: deque[np.ndarray] = deque(maxlen=self.window)
        super().reset(n, z0)

    def adapt(self, y: np.ndarray) -> None:
        """`steps` training steps on the pilot samples of the blocks y (n, B)."""
        if self.pilot_states is None or self.steps == 0:
            return
        L, P = self.trellis.memory, len(self.pilots)
        self.recent.append(y[:, L - 1:P].astype(np.float32).reshape(-1))
        y_p = np.concatenate(tuple(self.recent))
        labels = np.tile(self.pilot_states, len(y_p) // len(self.pilot_states))
        for _ in range(self.steps):
            _, grads = self.factors.gradients(y_p, labels)
            self.optimizer.step(grads)
        self.adaptations += 1

    def step(self, y: np.ndarray) -> Estimate:
        """Adapt to the block's pilots, then detect it (TrellisDetector.step)."""
        self.adapt(self.checked(y))
        return super().step(y)


def build_adaptive(*, artifact: str = "bcjrnet-isi", pilots: list[float] | None = None, steps: int = 5,
                   lr: float = 5e-3, window: int = 2, backend: str = "auto"):
    """The learned factor graph of `artifact` adapting online on each block's `pilots` (the pilot
    symbols; a sim:isi source's model gives them), `steps` Adam steps at `lr` per block on the
    pilots of the last `window` blocks. Without pilots it never adapts (frozen). On torch where
    torch is installed ("auto", "torch"), else (or on "numpy") this module's numpy twin."""
    if backend == "torch" or (backend == "auto" and torch_installed()):
        from engines.comms import learned_factor_graph

        return learned_factor_graph.build_adaptive(artifact=artifact, pilots=pilots, steps=steps, lr=lr,
                                                   window=window, backend=backend)
    if backend not in ("auto", "numpy"):
        raise BackendUnavailable(f"lfg-adaptive: trains on torch or numpy, not {backend!r}")
    if steps < 0 or not lr > 0 or window < 1:
        raise ValueError(f"steps must be >= 0, lr > 0 and window >= 1, got {steps}, {lr}, {window}")
    import exported_models
    from engines.artifacts import read_artifact

    folders = {d.name: d for d in exported_models.artifact_dirs()}
    if artifact not in folders:
        raise EngineInputError(f"lfg-adaptive: no shipped artifact {artifact!r}")
    art = read_artifact(folders[artifact])
    name, kwargs, channel = card_spec(art.card, art.path / "card.json")
    if name != "learned-factor-graph":
        raise EngineInputError(f"lfg-adaptive: {artifact} is not a learned factor graph artifact")
    trellis = Trellis(int(kwargs.get("memory", 4)), tuple(float(a) for a in channel["alphabet"]))
    B = int(channel["block"])
    n_params = sum(art.arrays[k].size for k in art.arrays if k.startswith(("weights.", "biases.")))
    info = EngineInfo(name="lfg-adaptive", family="dnn-aided", task="symbol-detection", backend="numpy",
                      window=1, in_shape=(B,), out_shape=(B,), n_params=n_params)
    return NumpyAdaptiveDetector(info, art.arrays, trellis, art.card.get("semiring", "sum"),
                                 np.asarray(pilots or [], dtype=np.float64), steps, lr, window)
