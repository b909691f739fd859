"""Trained symbol detectors from artifacts (task "symbol-detection"): the torch network engine.

A detector artifact exports only its network (ONNX graph `x` (N, B) -> `y`): the learned
factor graph's function nodes log p(y_i | c) (N, B, S), or the SBRNN's P(s_i = a1) (N, B).
The recursion around the factors (engines/comms/sum_product.py, numpy) is not part of the graph,
so ONNX Runtime and TensorRT run the same network that torch does, and the torch-free
engines/comms/detectors.py wraps whichever runs it (`engines.load.load_artifact` calls its
`detector_from_runtime` with the runtime's engine; the "auto" choice compares the runtimes on
the network alone). This module builds the torch engine of the network (torch only).

Card (beside the common fields): `architecture` = {"name": "learned-factor-graph" | "sbrnn",
"kwargs"}, `channel` = {"memory", "alphabet", "block", ...} (what the data were, and the
alphabet of the symbols), `semiring` ("sum" BCJRNet / "max" ViterbiNet) for the factor graph.
The weights hold the module's state dict (for the factor graph with its label statistics:
the transitions `log_transition` that the recursion uses).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engines.base import EngineInfo, check_finite
from engines.comms.detectors import FAMILIES, card_spec, detector_from_runtime
from engines.comms.learned_factor_graph import LearnedFactors
from engines.comms.sbrnn import SBRNN
from engines.errors import BackendUnavailable, EngineError, EngineInputError

ARCHITECTURES = {"learned-factor-graph": (LearnedFactors, FAMILIES["learned-factor-graph"]),
                 "sbrnn": (SBRNN, FAMILIES["sbrnn"])}
__all__ = ["ARCHITECTURES", "NetworkEngine", "detector_from_runtime", "engine_from_artifact"]


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


def engine_from_artifact(art, *, backend: str = "auto") -> NetworkEngine:
    """The torch network engine of a verified symbol-detection artifact (its graph's module)."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: runs on torch here, not {backend!r}")
    name, kwargs, channel = card_spec(art.card, art.path / "card.json")
    cls, _ = ARCHITECTURES[name]
    module = art.build_module(lambda: cls(**kwargs), name)
    B = int(channel["block"])
    out = (B, module.states) if isinstance(module, LearnedFactors) else (B,)
    info = EngineInfo(name=art.card.get("name", art.path.name), family=ARCHITECTURES[name][1],
                      task="symbol-detection", backend="torch", window=1, in_shape=(B,), out_shape=out,
                      n_params=sum(p.numel() for p in module.parameters() if p.requires_grad))
    return NetworkEngine(info, module)

