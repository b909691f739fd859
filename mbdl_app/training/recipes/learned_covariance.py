"""Recipe "learned-covariance": seed Example 13, the Kalman filter's V and W learned by BPTT.

Setting (ANCHORS "Learned noise covariances"): 1-D constant velocity, dt = 0.1, position
observed (engines.tracking.ssm.constant_velocity). The anchor gives no V, W or sequence
length, so we choose them: true V = q2 [[dt^3/3, dt^2/2], [dt^2/2, dt]] with q2 = 0.01
(white acceleration noise), W = 10; every trajectory starts at x0 ~ N(0, I), the filter's
prior. The filter starts mismatched, V = I (W known), and learns V and W as Cholesky
factors (engines.tracking.kalman.LearnedCovarianceKF) by minimizing the MSE of x_{t|t}
against the true states, backpropagating through every gain K_t.

Data: independent training (512 sequences of T = 100), validation (64 x 100) and test
(256 x 400) trajectories, each from its own seed. Training: Adam, lr 0.1 (on log-Cholesky
entries that must travel ~6 from V = I), batches of 32, 300 steps, validation every 10,
best weights kept (about 20 s of CPU on one core).

Card metrics (test set, MSE per component of (position, velocity), mean over time and
sequences): the filter with V = I (mismatched), after learning, and with full knowledge
(the true V, W); plus the learned and true V, W. Anchor: 1.588 -> 0.244 (full knowledge
0.239); since our V, W, T are our own choice, compare the pattern (learning closes the
gap to full knowledge), not the digits.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from engines.tracking.kalman import LearnedCovarianceKF
from engines.tracking.ssm import LinearSSM, constant_velocity
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.seeding import derive_seed
from mbdl_app.training.trainer import TrainConfig

DT, Q2, R2 = 0.1, 0.01, 10.0
SIZES = {False: {"train": (512, 100), "val": (64, 100), "test": (256, 400), "steps": 300},
         True: {"train": (32, 50), "val": (8, 50), "test": (16, 100), "steps": 10}}
SPLIT_STREAMS = {"train": 1, "val": 2, "test": 3}


def simulate(ssm: LinearSSM, n: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n trajectories of T steps from x0 ~ N(0, I): observations y (n, T, m), states x (n, T, n)."""
    g = torch.Generator().manual_seed(seed)

    def noise(L: torch.Tensor) -> torch.Tensor:
        return torch.randn(n, L.shape[0], generator=g, dtype=torch.float64) @ L.T

    L_Q, L_R = torch.linalg.cholesky(ssm.Q), torch.linalg.cholesky(ssm.R)
    x = torch.randn(n, ssm.n, generator=g, dtype=torch.float64)
    xs, ys = [], []
    for _ in range(T):
        x = ssm.f(x) + noise(L_Q)  # x_t = A x_{t-1} + w_t
        xs.append(x)
        ys.append(ssm.h(x) + noise(L_R))  # y_t = C x_t + v_t
    return torch.stack(ys, 1), torch.stack(xs, 1)


class LearnedCovariance(Recipe):
    name = "learned-covariance"
    description = "seed Ex. 13: V and W of a constant-velocity Kalman filter learned by BPTT"
    seed = 0

    def build(self, quick: bool) -> Plan:
        size = SIZES[quick]
        ssm = constant_velocity(DT, Q2, R2)
        sets = {split: simulate(ssm, *size[split], derive_seed(self.seed, stream))
                for split, stream in SPLIT_STREAMS.items()}
        prior = {"x0": torch.zeros(ssm.n, dtype=torch.float64), "P0": torch.eye(ssm.n, dtype=torch.float64)}
        model = LearnedCovarianceKF(ssm, V0=torch.eye(ssm.n, dtype=torch.float64), W0=ssm.R, **prior)
        mismatched = copy.deepcopy(model)
        full_knowledge = LearnedCovarianceKF(ssm, V0=ssm.Q, W0=ssm.R, **prior)

        def test_mse(kf: LearnedCovarianceKF) -> float:
            y, x = sets["test"]
            with torch.no_grad():
                return round(F.mse_loss(kf(y), x).item(), 4)

        def evaluate(trainer) -> dict:
            learned = trainer.model
            with torch.no_grad():
                V, W = learned.V.tolist(), learned.W.tolist()
            return {"test_mse_mismatched": test_mse(mismatched), "test_mse_learned": test_mse(learned),
                    "test_mse_full_knowledge": test_mse(full_knowledge),
                    "V_learned": V, "W_learned": W, "V_true": ssm.Q.tolist(), "W_true": ssm.R.tolist()}

        n_train, T_train = size["train"]
        return Plan(
            model=model,
            loss_fn=F.mse_loss,
            train_data=sets["train"],
            val_data=sets["val"],
            config=TrainConfig(lr=0.1, max_steps=size["steps"], batch_size=32 if not quick else 8,
                               eval_every=10 if not quick else 5, device="cpu"),
            evaluate=evaluate,
            card={
                "task": "kalman-covariances",
                "family": "learned-optimizer",
                "architecture": {"class": "engines.tracking.kalman.LearnedCovarianceKF",
                                 "model": "constant_velocity", "dt": DT,
                                 "V0": "I (mismatched)", "W0": "true W"},
                "input": {"shape": ["N", "T", 1], "dtype": "float64", "normalization": "none"},
                "output": {"shape": ["N", "T", 2], "dtype": "float64", "normalization": "none"},
                "training": {"data": f"constant velocity dt={DT}, V = {Q2} * CWNA(dt), W = {R2}, "
                                     f"x0 ~ N(0, I); {n_train} x {T_train} train, "
                                     f"{size['val'][0]} x {size['val'][1]} val, "
                                     f"{size['test'][0]} x {size['test'][1]} test"},
            },
        )


RECIPE = LearnedCovariance()
