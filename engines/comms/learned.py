"""Trained symbol detectors from artifacts (task "symbol-detection"), on any runtime.

A detector artifact exports only its network (ONNX graph `x` (N, B) -> `y`): the learned
factor graph's function nodes log p(y_i | c) (N, B, S), or the SBRNN's P(s_i = a1) (N, B).
The recursion around the factors (engines/comms/sum_product.py) is not part of the graph,
so ONNX Runtime and TensorRT run the same network that torch does and the detector wraps
whichever runs it (`engines.load.load_artifact` calls `detector_from_runtime` with the
runtime's engine; the "auto" choice compares the runtimes on the network alone).

Card (beside the common fields): `architecture` = {"name": "learned-factor-graph" | "sbrnn",
"kwargs"}, `channel` = {"memory", "alphabet", "block", ...} (what the data were, and the
alphabet of the symbols), `semiring` ("sum" BCJRNet / "max" ViterbiNet) for the factor graph.
The weights hold the module's state dict (for the factor graph with its label statistics:
the transitions `log_transition` that the recursion uses).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from engines.base import EngineInfo, check_finite
from engines.comms.learned_factor_graph import LearnedFactors, ModuleFactors
from engines.comms.sbrnn import SBRNN, SlidingDetector
from engines.comms.sum_product import Trellis, TrellisDetector
from engines.errors import ArtifactError, BackendUnavailable, EngineError, EngineInputError

ARCHITECTURES = {"learned-factor-graph": (LearnedFactors, "dnn-aided"), "sbrnn": (SBRNN, "black-box")}


class NetworkEngine:
    """The torch engine of a detector's network: x (N, B) float32 -> its graph output (stateless)."""

    def __init__(self, info: EngineInfo, module: nn.Module) -> None:
        self.info, self.module = info, module.float().eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1:] != self.info.in_shape:
            raise EngineInputError(f"{self.info.name}: expected input (N, {self.info.in_shape[0]}), "
                                   f"got {x.shape}")
        check_finite(self.info.name, x)
        with torch.inference_mode():
            y = self.module(torch.as_tensor(x, dtype=torch.float32)).numpy()
        if not np.isfinite(y).all():
            raise EngineError(f"{self.info.name}: the output became non-finite")
        return y


def _spec(card: dict[str, Any], where) -> tuple[str, dict, dict]:
    spec, channel = card.get("architecture") or {}, card.get("channel") or {}
    name = spec.get("name")
    if name not in ARCHITECTURES or "block" not in channel or "alphabet" not in channel:
        raise ArtifactError(f"{where}: a symbol-detection card needs architecture.name in "
                            f"{', '.join(ARCHITECTURES)} and channel.block, channel.alphabet; got "
                            f"{spec}, {channel}")
    return name, spec.get("kwargs", {}), channel


def engine_from_artifact(art, *, backend: str = "auto") -> NetworkEngine:
    """The torch network engine of a verified symbol-detection artifact (its graph's module)."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: runs on torch here, not {backend!r}")
    name, kwargs, channel = _spec(art.card, art.path / "card.json")
    cls, _ = ARCHITECTURES[name]
    module = art.build_module(lambda: cls(**kwargs), name)
    B = int(channel["block"])
    out = (B, module.states) if isinstance(module, LearnedFactors) else (B,)
    info = EngineInfo(name=art.card.get("name", art.path.name), family=ARCHITECTURES[name][1],
                      task="symbol-detection", backend="torch", window=1, in_shape=(B,), out_shape=out,
                      n_params=sum(p.numel() for p in module.parameters() if p.requires_grad))
    return NetworkEngine(info, module)


def detector_from_runtime(art, network) -> TrellisDetector | SlidingDetector:
    """The detector of a symbol-detection artifact around `network`, its graph on some runtime."""
    name, kwargs, channel = _spec(art.card, art.path / "card.json")
    alphabet = tuple(float(a) for a in channel["alphabet"])
    B = int(channel["block"])
    info = EngineInfo(name=art.card.get("name", art.path.name), family=ARCHITECTURES[name][1],
                      task="symbol-detection", backend=network.info.backend, window=1, in_shape=(B,),
                      out_shape=(B,), n_params=network.info.n_params)
    if name == "sbrnn":
        detector = SlidingDetector(info, network, alphabet)
    else:
        trellis = Trellis(int(kwargs.get("memory", 4)), alphabet)
        log_T = art.arrays["log_transition"][0].astype(np.float64)
        run = network.module if isinstance(network, NetworkEngine) else network
        detector = TrellisDetector(info, ModuleFactors(run), trellis, log_T, art.card.get("semiring", "sum"))
    if isinstance(network, NetworkEngine):
        detector.module = network.module  # what `mbdl export` exports and lfg-adaptive trains
    return detector
