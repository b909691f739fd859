"""Training: the shared Trainer, schedules, seeding, checkpoints, data parallelism, and the
recipes that produce the shipped artifacts (`recipes/`)."""

from mbdl_app.training.artifact import Artifact, read_artifact, write_artifact
from mbdl_app.training.bptt import detach_state, rollout, truncated_bptt
from mbdl_app.training.data import GeneratedData, TensorData
from mbdl_app.training.errors import TrainingError, UnknownRecipeError
from mbdl_app.training.schedules import Constant, Cosine, Piecewise, StepDecay
from mbdl_app.training.seeding import seed_everything
from mbdl_app.training.trainer import HistoryPoint, Stage, StepEvent, TrainConfig, Trainer, TrainResult

__all__ = [
    "Artifact", "Constant", "Cosine", "GeneratedData", "HistoryPoint", "Piecewise", "Stage", "StepDecay",
    "StepEvent", "TensorData", "TrainConfig", "TrainResult", "Trainer", "TrainingError",
    "UnknownRecipeError", "detach_state", "read_artifact", "rollout", "seed_everything",
    "truncated_bptt", "write_artifact",
]
