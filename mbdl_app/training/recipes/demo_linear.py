"""TEST RECIPE "demo-linear": a 4 -> 2 linear regression on synthetic data.

It exists so that tests exercise the whole training path (recipe -> Trainer -> artifact
-> read_artifact) in a second; it models nothing from the field and is never shipped
in exported_models/.
"""

from __future__ import annotations

import torch
from torch import nn

from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.trainer import TrainConfig

NOISE = 0.01


class DemoLinear(Recipe):
    name = "demo-linear"
    description = "test recipe: fits y = W x + b (4 -> 2) on synthetic data to exercise the training stack"
    seed = 0

    def build(self, quick: bool) -> Plan:
        g = torch.Generator().manual_seed(self.seed)
        W, b = torch.randn(2, 4, generator=g), torch.randn(2, generator=g)

        def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randn(n, 4, generator=g)
            return x, x @ W.T + b + NOISE * torch.randn(n, 2, generator=g)

        train, val, test = sample(512), sample(128), sample(256)
        config = TrainConfig(lr=0.05, max_steps=80 if quick else 800, batch_size=32, eval_every=20,
                             patience=5)
        return Plan(
            model=nn.Linear(4, 2),
            loss_fn=nn.functional.mse_loss,
            train_data=train,
            val_data=val,
            config=config,
            evaluate=lambda trainer: {"test_mse": trainer.evaluate(test)},
            card={
                "task": "regression (test recipe)",
                "family": "black-box",
                "architecture": {"class": "torch.nn.Linear", "in_features": 4, "out_features": 2},
                "input": {"shape": ["N", 4], "dtype": "float32", "normalization": "none"},
                "output": {"shape": ["N", 2], "dtype": "float32", "normalization": "none"},
                "training": {"data": f"synthetic y = W x + b + N(0, {NOISE}^2), W, b ~ N(0, 1); "
                                     "x ~ N(0, I); 512 train / 128 val / 256 test"},
            },
        )


RECIPE = DemoLinear()
