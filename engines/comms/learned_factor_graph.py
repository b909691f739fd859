"""The learned factor graph (ViterbiNet / BCJRNet): the trellis recursion with learned function nodes.

Seed Fig. 9 (DNN-aided sum-product; Shlezinger, Farsad, Eldar, Goldsmith, "ViterbiNet: a deep
learning based Viterbi algorithm for symbol detection", IEEE TWC 2020, sec. III; "Learned
factor graphs ...", IEEE TSP 2022). The recursion is engines/comms/sum_product.py's, unchanged;
only the factor f_i(c) = p(y_i | c) comes from data instead of the channel model:

    p(y | c) = p(c | y) p(y) / p(c)                                   (Bayes' rule)

- p(c | y): a classifier of the received sample y into the 2^L states, a fully connected
  network 1 -> 100 -> 50 -> 16 with sigmoid, ReLU and softmax (ViterbiNet's), trained by
  cross entropy on (y_i, c_i) pairs, c_i the window of the last L transmitted symbols.
- p(y): a Gaussian mixture of `mixture` (16) components fitted to the training y by EM.
  It is the same for every state at time i, so it cancels in the normalized messages and
  never changes a decision; it makes f a likelihood, comparable with the model's.
- p(c) and the transitions T(c | c'): label counts (add-one smoothing over the trellis's
  allowed transitions) -- ANCHORS.md: "transition probabilities from label counts".

`LearnedFactors` holds G such factor nodes at once (weights batched along a leading net
axis), so that one call trains the nets of many channels (seed Fig. 9 averages 20 channels
at 9 SNRs): `fit_factors` fits all G on their own data in one loop (one thread). An
artifact holds G = 1; its forward (N, B) -> (N, B, S) is the exported ONNX graph.

`AdaptiveTrellisDetector` (online adaptation, issue 16 "Beyond"): before detecting each
block it re-trains its classifier for a few steps on the block's pilots (known symbols at
the block's start), so it follows a channel that drifts; the frozen artifact does not.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from engines.base import EngineInfo, Estimate
from engines.comms.sum_product import Semiring, Trellis, TrellisDetector
from engines.errors import BackendUnavailable, EngineInputError

HIDDEN = (100, 50)


class LearnedFactors(nn.Module):
    """G learned function nodes log f(y, c) = log p(c | y) + log p(y) - log p(c) (module docstring).

    `log_likelihood(y)`: y (G, M) -> (G, M, S); `forward(x)` (G = 1): blocks x (N, B) -> (N, B, S),
    the exported graph. `logits(y)`: the classifier's (G, M, S), trained by `fit_factors`.
    The received samples are standardized by the training data's mean and std (buffers).
    """

    def __init__(self, memory: int = 4, nets: int = 1, hidden: tuple[int, ...] = HIDDEN,
                 mixture: int = 16) -> None:
        super().__init__()
        self.memory, self.nets, self.states, self.mixture = memory, nets, 2**memory, mixture
        dims = (1, *hidden, self.states)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims, dims[1:], strict=False):
            bound = 1.0 / math.sqrt(d_in)  # nn.Linear's initialization, per net
            self.weights.append(nn.Parameter(torch.empty(nets, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(nets, 1, d_out).uniform_(-bound, bound)))
        S = self.states
        self.register_buffer("y_mean", torch.zeros(nets, 1))
        self.register_buffer("y_std", torch.ones(nets, 1))
        self.register_buffer("log_prior", torch.full((nets, S), -math.log(S)))
        self.register_buffer("log_transition", torch.full((nets, S, S), -math.log(S)))
        self.register_buffer("mix_log_weight", torch.full((nets, mixture), -math.log(mixture)))
        self.register_buffer("mix_mean", torch.zeros(nets, mixture))
        self.register_buffer("mix_var", torch.ones(nets, mixture))

    def logits(self, y: Tensor) -> Tensor:
        """The classifier 1 -> 100 -> 50 -> S (sigmoid, ReLU; softmax in the loss): (G, M) -> (G, M, S)."""
        h = ((y - self.y_mean) / self.y_std)[..., None]
        last = len(self.weights) - 1
        for k, (W, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.baddbmm(b, h, W)
            if k < last:
                h = torch.sigmoid(h) if k == 0 else torch.relu(h)
        return h

    def log_evidence(self, y: Tensor) -> Tensor:
        """log p(y) of the Gaussian mixture: (G, M) -> (G, M)."""
        var = self.mix_var[:, None, :]
        d = y[..., None] - self.mix_mean[:, None, :]
        log_normal = -0.5 * (d * d / var + torch.log(2 * math.pi * var))
        return torch.logsumexp(self.mix_log_weight[:, None, :] + log_normal, dim=-1)

    def log_likelihood(self, y: Tensor) -> Tensor:
        """log p(y | c) = log p(c | y) + log p(y) - log p(c): (G, M) -> (G, M, S)."""
        return (torch.log_softmax(self.logits(y), -1) + self.log_evidence(y)[..., None]
                - self.log_prior[:, None, :])

    def forward(self, x: Tensor) -> Tensor:
        """Blocks x (N, B) -> log p(y_i | c) (N, B, S); one net (G = 1)."""
        return self.log_likelihood(x.reshape(1, -1)).reshape(x.shape[0], x.shape[1], self.states)


def fit_mixture(y: Tensor, k: int, iterations: int = 50) -> tuple[Tensor, Tensor, Tensor]:
    """A k-component Gaussian mixture per row of y (G, n) by EM: (log weights, means, variances), (G, k).

    Initialized at the quantiles of each row with the row's variance / k; variances floored at
    1e-4 of the row's variance so that a component cannot collapse onto one sample."""
    y = y.double()
    q = torch.linspace(0.5 / k, 1 - 0.5 / k, k, dtype=y.dtype)
    mean = torch.quantile(y, q, dim=1).T.contiguous()
    total = y.var(1, keepdim=True)
    var = (total / k).expand(-1, k).clone()
    log_w = torch.full_like(mean, -math.log(k))
    for _ in range(iterations):
        d = y[..., None] - mean[:, None, :]
        log_r = log_w[:, None, :] - 0.5 * (d * d / var[:, None, :] + torch.log(2 * math.pi * var[:, None, :]))
        r = torch.softmax(log_r, -1)  # responsibilities (G, n, k)
        nk = r.sum(1) + 1e-12
        log_w = torch.log(nk / y.shape[1])
        mean = (r * y[..., None]).sum(1) / nk
        d = y[..., None] - mean[:, None, :]
        var = torch.maximum((r * d * d).sum(1) / nk, 1e-4 * total)
    return log_w.float(), mean.float(), var.float()


def label_statistics(states: Tensor, trellis: Trellis) -> tuple[Tensor, Tensor]:
    """log p(c) (G, S) and log T(c | c') (G, S, S) from label sequences (G, n), add-one smoothed
    over the states and over each state's allowed transitions."""
    G, S = states.shape[0], trellis.states
    one = torch.ones_like(states, dtype=torch.float64)
    counts = torch.zeros(G, S, dtype=torch.float64).scatter_add_(1, states, one)
    log_prior = torch.log((counts + 1) / (counts + 1).sum(1, keepdim=True))
    pairs = states[:, :-1] * S + states[:, 1:]
    trans = torch.zeros(G, S * S, dtype=torch.float64).scatter_add_(1, pairs, one[:, 1:])
    allowed = torch.from_numpy(trellis.allowed())
    trans = torch.where(allowed, trans.reshape(G, S, S) + 1, torch.zeros(()))
    log_T = torch.log(trans / trans.sum(-1, keepdim=True))
    return log_prior.float(), log_T.float()


@dataclass(frozen=True)
class FitConfig:
    """How the classifiers are trained: Adam at `lr` for `steps` minibatches of `batch` samples
    per net (all G nets step together, each on its own data)."""

    steps: int = 1500
    batch: int = 256
    lr: float = 3e-3
    mixture_iterations: int = 50


def fit_factors(factors: LearnedFactors, y: Tensor, s: Tensor, trellis: Trellis,
                config: FitConfig = FitConfig(), generator: torch.Generator | None = None) -> list[float]:
    """Fit G factor nodes, net g on its own sequence: received y (G, n), transmitted s (G, n).

    Sets the standardization, label statistics and mixture, then trains the classifiers by
    cross entropy against the states c_i (i >= L - 1, which have a full window). Returns the
    mean cross entropy per net at every 100th step. On one thread: about 2 s for one net, 6 minutes
    for fig9's G = 360 (measured: 344 s of CPU).
    """
    L = trellis.memory
    y, s = torch.as_tensor(y, dtype=torch.float32), torch.as_tensor(s)
    labels = torch.from_numpy(trellis.states_of(s.numpy()))
    y_lab = y[:, L - 1:]
    with torch.no_grad():
        factors.y_mean.copy_(y.mean(1, keepdim=True))
        factors.y_std.copy_(y.std(1, keepdim=True).clamp_min(1e-6))
        log_prior, log_T = label_statistics(labels, trellis)
        factors.log_prior.copy_(log_prior)
        factors.log_transition.copy_(log_T)
        log_w, mean, var = fit_mixture(y, factors.mixture, config.mixture_iterations)
        factors.mix_log_weight.copy_(log_w)
        factors.mix_mean.copy_(mean)
        factors.mix_var.copy_(var)
    return train_classifier(factors, y_lab, labels, config.steps, config.batch, config.lr, generator)


def train_classifier(factors: LearnedFactors, y: Tensor, labels: Tensor, steps: int, batch: int, lr: float,
                     generator: torch.Generator | None = None,
                     optimizer: torch.optim.Optimizer | None = None) -> list[float]:
    """Adam (or `optimizer`) on the classifiers: `steps` minibatches of `batch` (y, c) pairs per net
    from y (G, n), labels (G, n); the loss is the sum over nets of each net's mean cross entropy."""
    G, n = labels.shape
    opt = optimizer or torch.optim.Adam(factors.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        idx = torch.randint(0, n, (G, batch), generator=generator) if batch < n else \
            torch.arange(n).expand(G, -1)
        logits = factors.logits(torch.gather(y, 1, idx))
        target = torch.gather(labels, 1, idx).reshape(-1)
        loss = F.cross_entropy(logits.reshape(-1, factors.states), target) * G
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            losses.append(loss.item() / G)
    return losses


class ModuleFactors:
    """A FactorSource around a module or runtime engine mapping blocks (N, B) to log f (N, B, S)."""

    def __init__(self, run) -> None:
        self.run = run

    def log_likelihood(self, y: np.ndarray) -> np.ndarray:
        if isinstance(self.run, nn.Module):
            with torch.inference_mode():
                return self.run(torch.from_numpy(y).float()).double().numpy()
        return np.asarray(self.run(y.astype(np.float32)), dtype=np.float64)

    def reset(self) -> None:
        """Nothing to restart: the factors are a fixed function of the block."""


class AdaptiveTrellisDetector(TrellisDetector):
    """The learned factor graph that re-trains on every block's pilots (online adaptation).

    Before detecting a block it takes `steps` Adam steps (lr `lr`, one optimizer for the whole
    stream) of the classifier on the pilot samples y_{L-1..P-1} of this block and the
    `window` - 1 before it, labelled by the known pilot states, then detects the whole block
    (pilots included, as unknown symbols, like every other detector) with the updated
    factors. The pilots (drivers/sim/isi.py: a repeated de Bruijn cycle) visit every state
    equally often, so the classifier keeps the class balance it was trained with (random
    pilots, which miss some of the 16 states in 47 samples, made it worse than frozen).
    Defaults measured on sim:isi vary=1 pilots=51 at gamma 0.2, 8 dB over 120 blocks: SER
    0.024 (frozen bcjrnet-isi 0.065, model-based BCJR with block-0 taps 0.058, BCJR knowing
    every block's taps 0.014); 10 steps: 0.020 at twice the cost. `reset` restores the
    weights it started from, so a replay adapts the same way. Torch (it trains); its numpy twin for
    the runtime install without torch: engines/comms/adaptive_numpy.py.
    """

    def __init__(self, info: EngineInfo, module: LearnedFactors, trellis: Trellis, semiring: Semiring,
                 pilots: np.ndarray, steps: int = 5, lr: float = 5e-3, window: int = 2) -> None:
        pilots = np.asarray(pilots, dtype=np.float64)
        if len(pilots) and len(pilots) < trellis.memory:
            raise ValueError(f"need at least {trellis.memory} pilots (the memory) to adapt, "
                             f"got {len(pilots)}")
        if len(pilots) > info.in_shape[0]:
            raise ValueError(f"{len(pilots)} pilots do not fit a block of {info.in_shape[0]}")
        if not set(np.unique(pilots)) <= set(trellis.alphabet):
            raise ValueError(f"pilots must be symbols of the alphabet {trellis.alphabet}")
        self.module, self.initial = module, copy.deepcopy(module.state_dict())
        self.pilots, self.steps, self.lr, self.window = pilots, steps, lr, window
        self.pilot_states = torch.from_numpy(trellis.states_of(pilots)) if len(pilots) else None
        self.adaptations = 0
        log_T = module.log_transition[0].double().numpy()
        super().__init__(info, ModuleFactors(module), trellis, log_T, semiring)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        self.module.load_state_dict(self.initial)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        self.generator = torch.Generator().manual_seed(0)
        self.recent: deque[torch.Tensor] = deque(maxlen=self.window)
        super().reset(n, z0)

    def adapt(self, y: np.ndarray) -> None:
        """`steps` training steps on the pilot samples of the blocks y (n, B)."""
        if self.pilot_states is None or self.steps == 0:
            return
        L, P = self.trellis.memory, len(self.pilots)
        self.recent.append(torch.from_numpy(y[:, L - 1:P]).float().reshape(-1))
        y_p = torch.cat(tuple(self.recent))[None]
        labels = self.pilot_states.repeat(y_p.shape[1] // len(self.pilot_states))[None]
        self.module.train()
        train_classifier(self.module, y_p, labels, self.steps, labels.shape[1], self.lr, self.generator,
                         self.optimizer)
        self.module.eval()
        self.adaptations += 1

    def step(self, y: np.ndarray) -> Estimate:
        """Adapt to the block's pilots, then detect it (TrellisDetector.step)."""
        self.adapt(self.checked(y))
        return super().step(y)


def build_adaptive(*, artifact: str = "bcjrnet-isi", pilots: list[float] | None = None, steps: int = 5,
                   lr: float = 5e-3, window: int = 2, backend: str = "auto") -> AdaptiveTrellisDetector:
    """The learned factor graph of `artifact` adapting online on each block's `pilots` (the pilot
    symbols; a sim:isi source's model gives them), `steps` Adam steps at `lr` per block on the
    pilots of the last `window` blocks. Without pilots it never adapts (frozen)."""
    import engines

    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"lfg-adaptive: trains on torch, not {backend!r}")
    if steps < 0 or not lr > 0 or window < 1:
        raise ValueError(f"steps must be >= 0, lr > 0 and window >= 1, got {steps}, {lr}, {window}")
    frozen = engines.load(artifact, backend="torch")
    module = getattr(frozen, "module", None)
    if not isinstance(module, LearnedFactors):
        raise EngineInputError(f"lfg-adaptive: {artifact} is not a learned factor graph artifact")
    info = EngineInfo(name="lfg-adaptive", family="dnn-aided", task="symbol-detection", backend="torch",
                      window=1, in_shape=frozen.info.in_shape, out_shape=frozen.info.out_shape,
                      n_params=frozen.info.n_params)
    return AdaptiveTrellisDetector(info, copy.deepcopy(module), frozen.trellis, frozen.semiring,
                                   np.asarray(pilots or [], dtype=np.float64), steps, lr, window)
