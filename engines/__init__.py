"""The decision rules f (model-based solvers, learned optimizers, unfolded networks,
DNN-aided optimizers, black-box baselines) and the runtimes that execute them.

Imports numpy, scipy, onnx, onnxruntime, torch (optional: the runtime install has none, and
the ONNX Runtime engines and numpy baselines run without it; engines.optional_torch), tensorrt
lazily; never drivers, mbdl_app or Qt.
"""

from engines.base import Engine, EngineInfo, Estimate, TrackerEngine
from engines.errors import ArtifactError, BackendUnavailable, EngineError, UnknownEngineError
from engines.load import available, load

__all__ = [
    "ArtifactError",
    "BackendUnavailable",
    "Engine",
    "EngineError",
    "EngineInfo",
    "Estimate",
    "TrackerEngine",
    "UnknownEngineError",
    "available",
    "load",
]
