"""The engines' exception family: every message names the engine or file and the problem."""


class EngineError(Exception):
    """Base of every error raised by engines/."""


class UnknownEngineError(EngineError):
    """`engines.load` was asked for a name that no builder or artifact provides."""


class ArtifactError(EngineError):
    """A model artifact is missing, corrupt or does not match its card (sha256, shapes)."""


class BackendUnavailable(EngineError):  # noqa: N818
    """The requested runtime (onnxruntime, tensorrt, cuda) is not usable here; says why."""


class EngineInputError(EngineError):
    """An engine received input of the wrong shape, dtype, or with NaN/Inf values."""


class TorchMissing(BackendUnavailable):
    """torch is not installed (the torch-free runtime install) and this engine or backend needs it."""
