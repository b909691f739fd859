"""Trained symbol detectors on any runtime, torch-free: the model-based step, the learned part plugged in.

Seed Fig. 9's idea (Shlezinger et al., "Learned factor graphs ...", IEEE TSP 2022; ViterbiNet,
IEEE TWC 2020): keep the channel's trellis recursion and learn only what the model would supply.
A symbol-detection artifact exports only its network (ONNX graph `x` (N, B) -> `y`); what runs
around it is numpy, so ONNX Runtime (or TensorRT, or torch) runs the network and nothing on this
path imports torch (the runtime install, issue 18):

- BCJRNet / ViterbiNet ("learned-factor-graph"): the graph is the learned function node,
  log f_i(c) = log p(y_i | c) = log p(c | y_i) + log p(y_i) - log p(c), (N, B) -> (N, B, S)
  (the classifier 1-100-50-S, the Gaussian-mixture evidence and the label prior;
  engines/comms/learned_factor_graph.py). `NetworkFactors` makes it the FactorSource of the
  model-based `TrellisDetector` (engines/comms/sum_product.py): the same numpy forward-backward
  that model-based BCJR (sum-product) and Viterbi (max-product) run with
  `ChannelFactors`, its transitions T(c | c') the artifact's label statistics
  (`log_transition` in the weights, read as numpy by engines/artifacts.py).

      log f  = network(y)                                    (learned: the ONNX graph)
      llr    = forward_backward(log f, trellis, log T, ...)  (model-based: numpy)

- SBRNN ("sbrnn"): black box, no trellis; the graph is the whole detector (the windowed
  bidirectional LSTM and the averaging of overlapping windows), (N, B) -> P(s_i = a1 | y).
  `SlidingDetector` maps it to the soft symbols a0 + (a1 - a0) P.

`detector_from_runtime(art, network)` is what `engines.load.load_artifact` wraps every runtime's
engine of a symbol-detection artifact with. The torch network engine (engines/comms/learned.py)
is one such network; its module is kept as `detector.module` (what `mbdl export` exports and
lfg-adaptive trains).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engines.base import EngineInfo, Estimate, check_finite
from engines.comms.sum_product import Trellis, TrellisDetector
from engines.errors import ArtifactError, EngineError, EngineInputError

# the card's architecture.name -> the engine family
FAMILIES = {"learned-factor-graph": "dnn-aided", "sbrnn": "black-box"}


def card_spec(card: dict[str, Any], where) -> tuple[str, dict, dict]:
    """(architecture name, its kwargs, the channel) of a symbol-detection card; ArtifactError naming
    `where` when the card does not describe a detector this code can build."""
    spec, channel = card.get("architecture") or {}, card.get("channel") or {}
    name = spec.get("name")
    if name not in FAMILIES or "block" not in channel or "alphabet" not in channel:
        raise ArtifactError(f"{where}: a symbol-detection card needs architecture.name in "
                            f"{', '.join(FAMILIES)} and channel.block, channel.alphabet; got "
                            f"{spec}, {channel}")
    return name, spec.get("kwargs", {}), channel


class NetworkFactors:
    """The learned function nodes as a FactorSource: log f_i(c) = network(y) (N, B, S).

    `run` maps blocks (N, B) float32 to log p(y_i | c) (N, B, S): an ONNX Runtime / TensorRT
    engine of the exported graph, or the torch network engine."""

    def __init__(self, run) -> None:
        self.run = run

    def log_likelihood(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(self.run(y.astype(np.float32)), dtype=np.float64)

    def reset(self) -> None:
        """Nothing to restart: the factors are a fixed function of the block."""


class SlidingDetector:
    """An SBRNN on a block stream, in the TrackerEngine contract of the trellis detectors.

    `run` maps blocks (N, B) float32 to P(s_i = alphabet[1]) (N, B): the ONNX Runtime / TensorRT
    engine of its graph, or the torch network engine (engines/comms/sbrnn.py's subclass also takes
    the torch module itself). Each block is detected on its own (no state carried); `step(y)`
    returns Estimate(mean = E[s_i | y] (n, B), cov None).
    """

    def __init__(self, info: EngineInfo, run, alphabet: tuple[float, float]) -> None:
        self.info, self.run, self.alphabet = info, run, alphabet
        self.block = info.in_shape[0]
        self.reset(1)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        if n < 1:
            raise EngineInputError(f"{self.info.name}: need n >= 1 streams, got {n}")
        if z0 is not None:
            raise EngineInputError(f"{self.info.name}: takes no initial state z0")
        self.n = n

    def probabilities(self, y: np.ndarray) -> np.ndarray:
        """P(s_i = alphabet[1] | y) (n, B) float64 of checked blocks y."""
        return np.asarray(self.run(y.astype(np.float32)), dtype=np.float64)

    def step(self, y: np.ndarray) -> Estimate:
        y = np.asarray(y, dtype=np.float64)
        if y.shape != (self.n, self.block):
            raise EngineInputError(f"{self.info.name}: expected blocks y of shape ({self.n}, {self.block}) "
                                   f"(block length {self.block}), got {y.shape}")
        check_finite(self.info.name, y)
        p = self.probabilities(y)
        if not np.isfinite(p).all():
            raise EngineError(f"{self.info.name}: the output became non-finite")
        a0, a1 = self.alphabet
        return Estimate(mean=a0 + (a1 - a0) * p, cov=None)


def detector_from_runtime(art, network) -> TrellisDetector | SlidingDetector:
    """The detector of a symbol-detection artifact around `network`, its graph on some runtime
    (module docstring): the trellis recursion with the learned factors, or the SBRNN's map."""
    name, kwargs, channel = card_spec(art.card, art.path / "card.json")
    alphabet = tuple(float(a) for a in channel["alphabet"])
    B = int(channel["block"])
    info = EngineInfo(name=art.card.get("name", art.path.name), family=FAMILIES[name],
                      task="symbol-detection", backend=network.info.backend, window=1, in_shape=(B,),
                      out_shape=(B,), n_params=network.info.n_params)
    if name == "sbrnn":
        detector = SlidingDetector(info, network, alphabet)
    else:
        trellis = Trellis(int(kwargs.get("memory", 4)), alphabet)
        log_T = art.arrays.get("log_transition")
        if log_T is None or log_T.shape[-2:] != (trellis.states, trellis.states):
            raise ArtifactError(f"{art.path / 'weights.safetensors'}: needs log_transition "
                                f"(1, {trellis.states}, {trellis.states}) for the trellis of memory "
                                f"{trellis.memory}, got {None if log_T is None else log_T.shape}")
        detector = TrellisDetector(info, NetworkFactors(network), trellis,
                                   log_T.reshape(-1, trellis.states, trellis.states)[0].astype(np.float64),
                                   art.card.get("semiring", "sum"))
    module = getattr(network, "module", None)
    if module is not None:
        detector.module = module  # the torch engine's: what `mbdl export` exports, lfg-adaptive trains
    return detector
