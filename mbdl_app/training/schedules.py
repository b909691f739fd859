"""Learning-rate schedules: the factor that multiplies each parameter group's lr at a step.

A schedule is a pure function of (step, total steps), so it needs no state of its own
and a resumed run picks it up exactly. `lr_scheduler` turns one into a
`torch.optim.lr_scheduler.LambdaLR`. In TOML: `schedule = { kind = "cosine", final = 0.01 }`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class _Schedule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def factor(self, step: int, total: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError


class Constant(_Schedule):
    """lr(step) = lr."""

    kind: Literal["constant"] = "constant"

    def factor(self, step: int, total: int) -> float:
        return 1.0


class StepDecay(_Schedule):
    """lr(step) = lr * gamma^floor(step / every)."""

    kind: Literal["step"] = "step"
    every: PositiveInt
    gamma: float = Field(0.1, gt=0.0, le=1.0)

    def factor(self, step: int, total: int) -> float:
        return self.gamma ** (step // self.every)


class Cosine(_Schedule):
    """lr(step) = lr * (final + (1 - final) (1 + cos(pi step / total)) / 2): lr at step 0,
    lr * final at the last step."""

    kind: Literal["cosine"] = "cosine"
    final: float = Field(0.0, ge=0.0, le=1.0)

    def factor(self, step: int, total: int) -> float:
        t = min(step, total) / max(total, 1)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))


class Piecewise(_Schedule):
    """Piecewise-constant stages: `stages = ((steps, factor), ...)`, lr * factor for that many
    steps each; the last factor holds after the last stage. E.g. ((2000, 1), (1000, 0.2))."""

    kind: Literal["piecewise"] = "piecewise"
    stages: tuple[tuple[PositiveInt, PositiveFloat], ...] = Field(min_length=1)

    def factor(self, step: int, total: int) -> float:
        end = 0
        for steps, f in self.stages:
            end += steps
            if step < end:
                return f
        return self.stages[-1][1]


Schedule = Annotated[Constant | StepDecay | Cosine | Piecewise, Field(discriminator="kind")]


def lr_scheduler(optimizer: torch.optim.Optimizer, schedule: _Schedule, total: int):
    """A LambdaLR applying `schedule` over `total` steps; stepped once per training step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, total))
