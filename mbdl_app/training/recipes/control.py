"""Recipe kalmannet-cv: KalmanNet with a known input for the controlled constant-velocity plant.

Issue 17, "Control": the estimator of the LQG loop learned from trajectories without the
noise statistics. The plant (engines.control.lqg.constant_velocity_plant, dt = 0.1,
q2 = r2 = 1) is simulated in closed loop under an *exploratory* controller that knows
nothing of V, W either: s_t = -K z_ab_t + sigma_e xi_t, with K the LQR gain (Q = I,
R = 0.1) on an alpha-beta tracker's estimate (alpha = 0.3, beta = 0.05, set by hand) and
exploration noise sigma_e in {0, 0.5, 1} (a third of the sequences each). KalmanNet
(engines.control.kalmannet_cv, arch #2 gain network) sees rows [x_t, s_{t-1}] and is trained
on the MSE of z_{t|t} against the simulated state: truncated BPTT on chunks, then whole
sequences (as recipes/tracking.py). The filter knows A, B, C; V and W never reach it.

Card metrics (held out): MSE of z_{t|t} in dB against the true-noise KF on test sequences
of the same exploratory loop, and the closed-loop cost J with KalmanNet in the loop
(s = -K z_hat) beside the oracle LQG (KF with the true noise) and the mismatched KF
(r2 assumed 0.01), all on the same plant noise (closed_loop.simulate, CARD_RUNS runs of
CARD_STEPS steps, burn-in CARD_BURN, seed CARD_SEED).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from engines.control.closed_loop import LinearController, simulate
from engines.control.kalmannet_cv import ControlledKalmanNet, TrackerEstimator
from engines.control.lqg import KalmanEstimator, constant_velocity_plant, lqr_gain
from engines.tracking.learned import LearnedTracker
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.recipes.tracking import ChunkStage, SequenceBatches, mse_db
from mbdl_app.training.trainer import TrainConfig, Trainer, TrainResult

DT, Q2, R2 = 0.1, 1.0, 1.0
Q_COST, R_COST = np.eye(2), np.array([[0.1]])
ALPHA, BETA = 0.3, 0.05  # the exploratory controller's alpha-beta tracker (hand-set)
EXPLORATION = (0.0, 0.5, 1.0)
SEEDS = (8101, 8102, 8103)  # train, validation, test trajectories
CARD_RUNS, CARD_STEPS, CARD_BURN, CARD_SEED = 200, 1000, 100, 8104


@dataclass(frozen=True)
class Size:
    pool: int
    T: int
    val: int
    test: int
    batch: int
    chunk: int
    steps: tuple[int, int]
    eval_every: int
    card_runs: int
    card_steps: int


FULL = Size(pool=256, T=200, val=32, test=64, batch=32, chunk=50, steps=(300, 50), eval_every=25,
            card_runs=CARD_RUNS, card_steps=CARD_STEPS)
QUICK = Size(pool=8, T=30, val=4, test=4, batch=4, chunk=10, steps=(3, 2), eval_every=2, card_runs=4,
             card_steps=40)


def exploratory_trajectories(n: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n closed-loop sequences of the CV plant under the exploratory controller (module docstring):
    rows [x_t, s_{t-1}] (n, T, 2) and states z_t (n, T, 2), float32."""
    plant = constant_velocity_plant(DT, Q2, R2)
    K, _ = lqr_gain(plant.A, plant.B, Q_COST, R_COST)
    rng = np.random.default_rng(seed)
    sigma = np.array(EXPLORATION)[np.arange(n) % len(EXPLORATION)][:, None]
    z = rng.standard_normal((n, 2))
    z_ab, s = np.zeros((n, 2)), np.zeros((n, 1))
    rows, states = np.empty((n, T, 2)), np.empty((n, T, 2))
    Lv = np.linalg.cholesky(plant.V)
    for t in range(T):
        x = z @ plant.C.T + np.sqrt(R2) * rng.standard_normal((n, 1))
        rows[:, t], states[:, t] = np.hstack((x, s)), z
        prior = z_ab @ plant.A.T + s @ plant.B.T
        r = x[:, 0] - prior[:, 0]
        z_ab = prior + np.stack((ALPHA * r, BETA / DT * r), 1)
        s = -z_ab @ K.T + sigma * rng.standard_normal((n, 1))
        z = z @ plant.A.T + s @ plant.B.T + rng.standard_normal((n, 2)) @ Lv.T
    return torch.from_numpy(rows).float(), torch.from_numpy(states).float()


def closed_loop_costs(module: torch.nn.Module, runs: int, steps: int, burn: int, seed: int) -> dict[str, Any]:
    """J of KalmanNet (module) in the loop beside the oracle and the mismatched KF, same noise."""
    plant = constant_velocity_plant(DT, Q2, R2)
    K, _ = lqr_gain(plant.A, plant.B, Q_COST, R_COST)
    estimators = {"kalmannet": TrackerEstimator(LearnedTracker("kalmannet-cv", "dnn-aided", module)),
                  "kf_oracle": KalmanEstimator(plant),
                  "kf_mismatched_r2_0.01": KalmanEstimator(plant.with_noise(W=[[0.01]]))}
    out: dict[str, Any] = {"runs": runs, "steps": steps, "burn": burn, "seed": seed}
    for name, est in estimators.items():
        start = time.perf_counter()
        r = simulate(plant, est, LinearController(K), Q_COST, R_COST, runs=runs, steps=steps, burn=burn,
                     seed=seed)
        out[name] = {"J": round(r.J, 4), "J_se": round(r.J_se, 4),
                     "wall_s": round(time.perf_counter() - start, 2)}
    return out


class KalmanNetCVRecipe(Recipe):
    name = "kalmannet-cv"
    description = "KalmanNet (arch #2) with the known input B s_{t-1}, CV plant dt = 0.1 (issue 17)"
    seed = 0

    def build(self, quick: bool) -> Plan:
        size = QUICK if quick else FULL
        plant = constant_velocity_plant(DT, Q2, R2)
        y_train, z_train = exploratory_trajectories(size.pool, size.T, SEEDS[0])
        val = exploratory_trajectories(size.val, size.T, SEEDS[1])
        y_test, z_test = exploratory_trajectories(size.test, size.T, SEEDS[2])
        model_spec = {"A": plant.A.tolist(), "B": plant.B.tolist(), "C": plant.C.tolist(), "dt": DT}
        kwargs = {"arch": "arch2"}
        model = ControlledKalmanNet(plant.A, plant.B, plant.C, x0=(0.0, 0.0), **kwargs)
        stages = (ChunkStage(name="chunks", lr=1e-3, max_steps=size.steps[0], bptt_chunk=size.chunk),
                  ChunkStage(name="full", lr=1e-4, max_steps=size.steps[1], bptt_chunk=None))

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            net = trainer.model.eval()
            with torch.no_grad():
                mse = float(10 * torch.log10(torch.mean(
                    (torch.stack(list(_rollout(net, y_test)), 1) - z_test) ** 2)))
            kf = KalmanEstimator(plant)
            kf.reset(size.test)
            rows = y_test.double().numpy()
            kf_est = np.stack([kf.step(rows[:, t, :1], rows[:, t, 1:]) for t in range(size.T)], 1)
            kf_mse = float(10 * np.log10(np.mean((kf_est - z_test.double().numpy()) ** 2)))
            return {"test_mse_db": round(mse, 4), "kf_true_noise_test_mse_db": round(kf_mse, 4),
                    "test_sequences": size.test, "test_T": size.T, "test_seed": SEEDS[2],
                    "closed_loop": closed_loop_costs(net, size.card_runs, size.card_steps,
                                                     min(CARD_BURN, size.card_steps // 4), CARD_SEED)}

        card = {
            "task": "control-estimator", "family": "dnn-aided", "description": self.description,
            "architecture": {"name": "controlled-kalmannet", "kwargs": kwargs},
            "model": model_spec, "x0": [0.0, 0.0],
            "input": {"shape": ["N", 2], "dtype": "float32",
                      "meaning": "[x_t, s_{t-1}]: the position measurement and the input applied last step"},
            "output": {"shape": ["N", 2], "dtype": "float32", "meaning": "z_{t|t} (position, velocity)"},
            "training": {
                "data": (f"CV plant dt={DT}, q2={Q2}, r2={R2} in closed loop under s = -K z_ab + sigma_e xi "
                         f"(alpha-beta {ALPHA}/{BETA}, sigma_e in {EXPLORATION}); train pool {size.pool} x "
                         f"T={size.T} (seed {SEEDS[0]}), validation {size.val} (seed {SEEDS[1]}), test "
                         f"{size.test} (seed {SEEDS[2]}); no noise statistics reach the filter"),
                "loss": "MSE of z_{t|t}", "validation_metric": "MSE dB",
                "schedule": (f"truncated BPTT chunks of {size.chunk} ({size.steps[0]} batches of "
                             f"{size.batch}, lr 1e-3), whole sequences ({size.steps[1]} batches, lr 1e-4); "
                             "Adam, weight decay 1e-4, grad norm clipped at 1"),
            },
        }
        return Plan(
            model=model, loss_fn=torch.nn.functional.mse_loss,
            train_data=SequenceBatches(y_train, z_train, size.batch), val_data=val,
            config=TrainConfig(lr=1e-3, weight_decay=1e-4, grad_clip=1.0, max_steps=1, batch_size=64,
                               eval_every=size.eval_every, patience=8, device="cpu"),
            evaluate=evaluate, card=card, stages=stages, metric_fn=mse_db)

    def fit_stages(self, trainer: Trainer, plan: Plan) -> list[TrainResult]:
        results = []
        for index, stage in enumerate(plan.stages):
            plan.train_data.stage = index
            trainer.config = trainer.config.model_copy(update={"bptt_chunk": stage.bptt_chunk})
            results.append(trainer.fit(stage))
        return results


def _rollout(net: ControlledKalmanNet, rows: torch.Tensor):
    state = net.init_state(rows.shape[0])
    for t in range(rows.shape[1]):
        state, z = net.step(state, rows[:, t])
        yield z


RECIPE = KalmanNetCVRecipe()
