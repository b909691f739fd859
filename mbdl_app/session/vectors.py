"""A vector engine ((N, m) -> (N, n): sparse coding) on a live stream of samples.

A generic vector engine is stateless: one sample's value x (m,) in, one estimate (n,) out. On a
samples stream (sim:cs: compressed-sensing measurements) the session runs it like a tracker,
one call per sample, through `SampleStepper`'s reset/step; its output is scored against the
sample's truth like a tracker's (workers.TRUTH_OF_TASK: a sparse code against "code").
"""

from __future__ import annotations

import numpy as np

from engines.base import Estimate
from mbdl_app.catalog import engine_kind


class SampleStepper:
    """The TrackerEngine face of a vector engine: reset does nothing, step(x (N, m)) ->
    Estimate(mean = engine(x) (N, n) float64, cov None). Other attributes (info, card,
    artifact_sha256, operator) are the engine's."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def __getattr__(self, name: str):
        return getattr(self.engine, name)

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        """Nothing to reset: the engine keeps no state between samples."""

    def step(self, x: np.ndarray) -> Estimate:
        return Estimate(mean=np.asarray(self.engine(np.asarray(x, dtype=np.float32)), dtype=np.float64))


def live_engine(engine):
    """`engine` as the session runs it: a vector engine behind SampleStepper, others as they are."""
    return SampleStepper(engine) if engine_kind(engine) == "vectors" else engine
