"""Recipes for the learned Lorenz trackers: KalmanNet (#2, #1), the GRU tracker, the model-based RNN.

Shipped (exported_models/): kalmannet-lorenz and kalmannet-lorenz-rot. kalmannet1-lorenz,
gru-lorenz and mbrnn-lorenz are trained by `mbdl train NAME --out DIR` when wanted.

Settings (ANCHORS.md "Tracking - KalmanNet on the Lorenz attractor"; Revach et al. 2022):

  lorenz       sampling mismatch (seed Table 2): truth integrated at dt = 1e-5 (J = 5) and
               decimated 1:2000 to dt = 0.02, no process noise, identity observation, r2 = 1;
               the trackers assume the dt = 0.02, J = 5 model. Test: T = 3000.
  lorenz-rot   1-degree rotation at 1/r2 = 30 dB: data y = R_z(1 deg) x + v, r2 = 1e-3,
               nu = q2 / r2 = -20 dB (q2 = 1e-5), dt-model data (J = 5); the trackers assume
               the identity observation. Test: T = 2000 (the anchors' noisy-state length).

Data: independent trajectories for training, validation and test (drivers' LorenzSimulator
with three seeds per setting; the anchors' reference code reused one trajectory, we do
not). Every trajectory starts at x0 + x0_std N(0, I) and the trackers start at the prior
x0 = (1, 1, 1). Training sequences are T_TRAIN long, drawn in batches from a fixed pool.

Training (ANCHORS): Adam with weight decay 1e-4, truncated BPTT on short chunks first
(BPTT_CHUNK steps per update, lr 1e-3), then whole training sequences (lr 1e-4); gradient
norm clipped at 1; validation MSE (dB) on fixed validation trajectories, early stopping,
best weights kept. Loss: MSE of x_{t|t}. Budgets fit one CPU core in about half an hour.

Card metrics: test MSE in dB (10 log10 of the mean over test sequences of the per-sequence
MSE per component), the std over sequences of the per-sequence dB values, the number of
test sequences, their wall time, and the same for our EKF (engines.load("ekf") with the
model the trackers assume; default Q for sampling mismatch) on the same test set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from drivers.sim.lorenz import LorenzParams, LorenzSimulator
from engines.tracking.kalman import build_ekf
from engines.tracking.learned import ARCHITECTURES, build_tracker_module
from mbdl_app.training.bptt import rollout
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.seeding import derive_seed
from mbdl_app.training.trainer import Stage, TrainConfig, Trainer, TrainResult

X0 = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Setting:
    """One tracking setting: the data, the model the trackers assume, the set sizes."""

    name: str
    description: str
    data: LorenzParams
    model: dict[str, Any]
    seeds: tuple[int, int, int]  # train, validation, test
    test: int  # test sequences
    test_T: int
    steps: tuple[int, int]  # batches of the chunked and the full-sequence stages


SETTINGS: dict[str, Setting] = {
    "lorenz": Setting(
        "lorenz", "sampling mismatch: dt = 1e-5 truth decimated 1:2000, model dt = 0.02, r2 = 1",
        LorenzParams(J=5, dt=0.02, q2=0.0, r2=1.0, decimate=2000, x0_std=0.1),
        {"J": 5, "dt": 0.02, "q2": None, "r2": 1.0, "obs": "identity", "angle_deg": 0.0},
        seeds=(7101, 7102, 7103), test=10, test_T=3000, steps=(120, 40)),
    "lorenz-rot": Setting(
        "lorenz-rot", "1-degree rotated observations at 1/r2 = 30 dB, nu = -20 dB; model assumes y = x",
        LorenzParams(J=5, dt=0.02, q2=1e-5, r2=1e-3, obs="rotated", angle_deg=1.0, x0_std=0.1),
        {"J": 5, "dt": 0.02, "q2": 1e-5, "r2": 1e-3, "obs": "identity", "angle_deg": 0.0},
        # validation levels off within 20 batches: -36.3 dB after 20, -36.1 after 40 (a longer run)
        seeds=(7201, 7202, 7203), test=20, test_T=2000, steps=(20, 10)),
}


@dataclass(frozen=True)
class Size:
    """Pool and set sizes, sequence lengths and steps: full, or tiny for tests (quick)."""

    pool: int
    T_train: int
    val: int
    val_T: int
    test: int | None  # None: the setting's
    test_T: int | None  # None: the setting's
    batch: int
    chunk: int
    steps: tuple[int, int] | None  # chunked stage, full-sequence stage; None: the setting's
    eval_every: int
    decimate: int | None = None  # None: the setting's


FULL = Size(pool=192, T_train=1000, val=8, val_T=1000, test=None, test_T=None, batch=32, chunk=50,
            steps=None, eval_every=20)
QUICK = Size(pool=8, T_train=24, val=2, val_T=24, test=2, test_T=30, batch=4, chunk=8, steps=(3, 2),
             eval_every=2, decimate=20)


@dataclass(frozen=True)
class ChunkStage(Stage):
    """A Stage trained with truncated BPTT over chunks of `bptt_chunk` steps (None: whole sequences)."""

    bptt_chunk: int | None = None


def mse_db(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """10 log10 of the MSE per component over everything given."""
    return 10 * torch.log10(torch.mean((pred - target) ** 2))


def per_sequence_mse(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """MSE per component of each sequence (N,) from (N, T, n) arrays."""
    return np.mean((np.asarray(pred, dtype=np.float64) - target) ** 2, axis=(1, 2))


def summarize(mse: np.ndarray) -> dict[str, float]:
    """The anchors' figures: dB of the mean MSE, and the std of the per-sequence dB."""
    return {"mse_db": round(10 * math.log10(float(mse.mean())), 4),
            "mse_db_std": round(float(np.std(10 * np.log10(mse))), 4)}


def simulate(params: LorenzParams, seed: int, n: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n trajectories of T samples: observations y (n, T, m) and states x (n, T, 3), float32."""
    x, y = LorenzSimulator(replace(params, seed=seed)).trajectories(n, T)
    return torch.from_numpy(y).float(), torch.from_numpy(x).float()


class SequenceBatches:
    """Training data fn(step, generator): `batch` sequences drawn from a fixed pool.

    The trainer seeds the generator by (seed, rank, step) and counts steps from 0 in each
    stage; mixing in `stage` (set by fit_stages) keeps two stages from drawing the same
    batches.
    """

    def __init__(self, y: torch.Tensor, x: torch.Tensor, batch: int) -> None:
        self.y, self.x, self.batch, self.stage = y, x, batch, 0

    def __call__(self, step: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed(generator.initial_seed(), self.stage))
        idx = torch.randperm(self.y.shape[0], generator=g)[:self.batch]
        return self.y[idx], self.x[idx]


def ekf_reference(setting: Setting, y: torch.Tensor, x: torch.Tensor) -> dict[str, float]:
    """Our EKF (the model the trackers assume) on the test set: MSE dB, std, wall time."""
    ekf = build_ekf(**setting.model, x0=X0)
    y64 = y.double().numpy()
    start = time.perf_counter()
    ekf.reset(y64.shape[0])
    means = np.stack([ekf.step(y64[:, t]).mean for t in range(y64.shape[1])], 1)
    wall = time.perf_counter() - start
    return {**summarize(per_sequence_mse(means, x.numpy())), "run_time_s": round(wall, 3)}


@dataclass
class TrackingRecipe(Recipe):
    """One tracker architecture trained on one setting (see the module docstring)."""

    name: str
    description: str
    arch: str
    setting: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    def stages(self, size: Size) -> tuple[ChunkStage, ...]:
        steps = size.steps or SETTINGS[self.setting].steps
        return (ChunkStage(name="chunks", lr=1e-3, max_steps=steps[0], bptt_chunk=size.chunk),
                ChunkStage(name="full", lr=1e-4, max_steps=steps[1], bptt_chunk=None))

    def build(self, quick: bool) -> Plan:
        size = QUICK if quick else FULL
        setting = SETTINGS[self.setting]
        data = setting.data if size.decimate is None or setting.data.decimate is None \
            else replace(setting.data, decimate=size.decimate)
        test_T, n_test = size.test_T or setting.test_T, size.test or setting.test
        s_train, s_val, s_test = setting.seeds
        y_train, x_train = simulate(data, s_train, size.pool, size.T_train)
        val = simulate(data, s_val, size.val, size.val_T)
        y_test, x_test = simulate(data, s_test, n_test, test_T)
        model = build_tracker_module(self.arch, setting.model | {"q2": setting.model["q2"] or 0.0}, X0,
                                     **self.kwargs)

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            net = trainer.model.eval()
            start = time.perf_counter()
            with torch.no_grad():
                pred = rollout(net, y_test)
            wall = time.perf_counter() - start
            mse = per_sequence_mse(pred.numpy(), x_test.numpy())
            return {**{f"test_{k}": v for k, v in summarize(mse).items()}, "test_run_time_s": round(wall, 3),
                    "test_sequences": n_test, "test_T": test_T, "test_seed": s_test,
                    "ekf": {**ekf_reference(setting, y_test, x_test), "model": setting.model}}

        stages = self.stages(size)
        card = {
            "task": "tracking",
            "family": ARCHITECTURES[self.arch].family,
            "description": f"{self.description}; {setting.description}",
            "architecture": {"name": self.arch, "kwargs": self.kwargs},
            "model": setting.model | {"q2": setting.model["q2"] or 0.0},
            "x0": list(X0),
            "input": {"shape": ["N", 3], "dtype": "float32", "meaning": "observations y_t, one per step"},
            "output": {"shape": ["N", 3], "dtype": "float32",
                       "meaning": "x_{t|t} (and Sigma_{t|t} if has_cov)"},
            "training": {
                "data": (f"{data}; independent trajectories: train pool {size.pool} x T={size.T_train} "
                         f"(seed {s_train}), validation {size.val} x T={size.val_T} (seed {s_val}), test "
                         f"{n_test} x T={test_T} (seed {s_test}); trackers start at x0 = {list(X0)}"),
                "loss": "MSE of x_{t|t}", "validation_metric": "MSE dB",
                "schedule": (f"truncated BPTT, chunks of {size.chunk} steps at lr 1e-3 "
                             f"({stages[0].max_steps} batches of {size.batch}), then whole sequences at lr "
                             f"1e-4 ({stages[1].max_steps} batches); Adam, weight decay 1e-4, grad norm "
                             "clipped at 1"),
            },
        }
        return Plan(
            model=model, loss_fn=torch.nn.functional.mse_loss,
            train_data=SequenceBatches(y_train, x_train, size.batch), val_data=val,
            config=TrainConfig(lr=1e-3, weight_decay=1e-4, grad_clip=1.0, max_steps=1, batch_size=64,
                               eval_every=size.eval_every, patience=8, device="cpu"),
            evaluate=evaluate, card=card, stages=stages, metric_fn=mse_db,
        )

    def fit_stages(self, trainer: Trainer, plan: Plan) -> list[TrainResult]:
        """Each stage with its own BPTT chunk and its own batches."""
        results = []
        for index, stage in enumerate(plan.stages):
            plan.train_data.stage = index
            trainer.config = trainer.config.model_copy(update={"bptt_chunk": stage.bptt_chunk})
            results.append(trainer.fit(stage))
        return results


FRAME_NOISE = 0.1  # pixel noise std; the blob's peak is 1
FRAMES_DATA = LorenzParams(J=5, dt=0.02, q2=0.01, r2=1.0, x0_std=0.1)  # r2 unused: frames are the observation


@dataclass(frozen=True)
class FrameSize:
    """Sizes of the Ex. 19 recipe: trajectories, encoder steps, KalmanNet steps; full or quick."""

    pool: int
    T_train: int
    val: int
    test: int
    test_T: int
    encoder_steps: int
    steps: tuple[int, int]
    chunk: int
    batch: int


FRAMES_FULL = FrameSize(pool=64, T_train=200, val=4, test=10, test_T=1000, encoder_steps=600,
                        steps=(80, 20), chunk=50, batch=16)
FRAMES_QUICK = FrameSize(pool=6, T_train=16, val=2, test=2, test_T=20, encoder_steps=4, steps=(2, 1),
                         chunk=8, batch=3)


class FramesRecipe(Recipe):
    """Seed Ex. 19: a CNN learns features of rendered frames, KalmanNet filters them (features.py).

    Stage "encoder": the FrameEncoder alone, frame -> state regression (MSE) on the frames of
    the training pool, its own Trainer (not recurrent). R = r2 I of the feature observation
    is then the encoder's MSE per component on the validation frames, written into the
    card's model. Stages "chunks" and "full": KalmanNet on the frozen encoder's features, as
    in TrackingRecipe. Metrics on test sequences: the raw features, the EKF filtering them
    (Lorenz f, h = I, R estimated) and KalmanNet on them. Data: FRAMES_DATA (nu = -20 dB
    dynamics, pixel noise FRAME_NOISE), independent train/validation/test trajectories.
    """

    name = "kalmannet-lorenz-frames"
    description = "KalmanNet on CNN features of 28 x 28 blob frames (seed Ex. 19)"
    seed = 0
    seeds = (7301, 7302, 7303)

    def build(self, quick: bool) -> Plan:
        from engines.tracking.features import render

        size = FRAMES_QUICK if quick else FRAMES_FULL
        s_train, s_val, s_test = self.seeds

        def frames(seed: int, n: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
            _, x = simulate(FRAMES_DATA, seed, n, T)
            noise = torch.Generator().manual_seed(derive_seed(seed, 1))
            return render(x, FRAME_NOISE, noise).flatten(-2), x

        y_train, x_train = frames(s_train, size.pool, size.T_train)
        y_val, x_val = frames(s_val, size.val, size.T_train)
        y_test, x_test = frames(s_test, size.test, size.test_T)
        model_params = {"J": FRAMES_DATA.J, "dt": FRAMES_DATA.dt, "q2": FRAMES_DATA.q2, "r2": 1.0,
                        "obs": "identity", "angle_deg": 0.0}
        kwargs = {"arch": "arch2", "size": 28, "width": 8}
        model = build_tracker_module("feature-kalmannet", model_params, X0, **kwargs)
        self._encoder_data = ((y_train.flatten(0, 1), x_train.flatten(0, 1)),
                              (y_val.flatten(0, 1), x_val.flatten(0, 1)))
        card = {
            "task": "tracking", "family": "dnn-aided", "description": self.description,
            "architecture": {"name": "feature-kalmannet", "kwargs": kwargs},
            "model": model_params, "x0": list(X0),
            "input": {"shape": ["N", 28 * 28], "dtype": "float32",
                      "meaning": "a 28 x 28 frame (row-major) of the blob-rendered state, one per step"},
            "output": {"shape": ["N", 3], "dtype": "float32", "meaning": "x_{t|t} (and Sigma_{t|t})"},
            "training": {
                "data": (f"{FRAMES_DATA}; frames rendered by engines.tracking.features.render with pixel "
                         f"noise {FRAME_NOISE}; train pool {size.pool} x T={size.T_train} (seed {s_train}), "
                         f"validation {size.val} x T={size.T_train} (seed {s_val}), test {size.test} x "
                         f"T={size.test_T} (seed {s_test})"),
                "loss": "encoder: MSE of the features against the state; KalmanNet: MSE of x_{t|t}",
                "schedule": (f"encoder {size.encoder_steps} batches of 128 frames at lr 1e-3, then KalmanNet "
                             f"on frozen features: chunks of {size.chunk} steps ({size.steps[0]} batches of "
                             f"{size.batch}, lr 1e-3), whole sequences ({size.steps[1]} batches, lr 1e-4)"),
            },
        }

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            net = trainer.model.eval()
            with torch.no_grad():
                feats = net.encoder(y_test.flatten(0, 1)).view(size.test, size.test_T, 3)
                pred = rollout(net, y_test)
            setting = Setting("frames", "", FRAMES_DATA, card["model"], self.seeds, size.test, size.test_T,
                              size.steps)
            mse = per_sequence_mse(pred.numpy(), x_test.numpy())
            return {**{f"test_{k}": v for k, v in summarize(mse).items()},
                    "features_mse_db": summarize(per_sequence_mse(feats.numpy(), x_test.numpy()))["mse_db"],
                    "ekf_on_features": ekf_reference(setting, feats, x_test),
                    "feature_r2": card["model"]["r2"], "test_sequences": size.test, "test_T": size.test_T}

        def train_params(m):  # the encoder is trained first, alone
            return m.tracker.parameters()

        stages = (ChunkStage(name="chunks", params=train_params, lr=1e-3, max_steps=size.steps[0],
                             bptt_chunk=size.chunk),
                  ChunkStage(name="full", params=train_params, lr=1e-4, max_steps=size.steps[1]))
        self._encoder_steps = size.encoder_steps
        return Plan(
            model=model, loss_fn=torch.nn.functional.mse_loss,
            train_data=SequenceBatches(y_train, x_train, size.batch), val_data=(y_val, x_val),
            config=TrainConfig(lr=1e-3, weight_decay=1e-4, grad_clip=1.0, max_steps=1, batch_size=64,
                               eval_every=10, patience=8, device="cpu"),
            evaluate=evaluate, card=card, stages=stages, metric_fn=mse_db,
        )

    def fit_stages(self, trainer: Trainer, plan: Plan) -> list[TrainResult]:
        """The encoder first (its own trainer), R from its validation error, then KalmanNet."""
        model = trainer.model
        train, val = self._encoder_data
        config = trainer.config.model_copy(update={
            "max_steps": self._encoder_steps, "batch_size": min(128, len(train[0])),
            "eval_every": max(1, self._encoder_steps // 10)})
        results = [Trainer(model.encoder, torch.nn.functional.mse_loss, train, val, config,
                           quiet=True).fit(Stage(name="encoder"))]
        with torch.no_grad():
            r2 = float(torch.mean((model.encoder(val[0]) - val[1]) ** 2))
        plan.card["model"]["r2"] = round(r2, 6)
        model.tracker.R = r2 * torch.eye(3)  # the Klein et al. covariance uses the feature noise
        for p in model.encoder.parameters():
            p.requires_grad_(False)
        for index, stage in enumerate(plan.stages):
            plan.train_data.stage = index
            trainer.config = trainer.config.model_copy(update={"bptt_chunk": stage.bptt_chunk})
            results.append(trainer.fit(stage))
        return results


RECIPES = (
    TrackingRecipe("kalmannet-lorenz", "KalmanNet architecture #2 (seed Ex. 18)", "kalmannet", "lorenz",
                   {"arch": "arch2"}),
    TrackingRecipe("kalmannet-lorenz-rot", "KalmanNet architecture #2 (seed Ex. 18)", "kalmannet",
                   "lorenz-rot", {"arch": "arch2"}),
    TrackingRecipe("kalmannet1-lorenz", "KalmanNet architecture #1 (seed Ex. 18)", "kalmannet", "lorenz",
                   {"arch": "arch1"}),
    TrackingRecipe("gru-lorenz", "black-box GRU tracker (hidden 64)", "gru-tracker", "lorenz",
                   {"hidden": 64}),
    TrackingRecipe("mbrnn-lorenz", "model-based RNN: GRU increment over f(x) (hidden 64)", "model-based-rnn",
                   "lorenz", {"hidden": 64}),
    FramesRecipe(),
)
SHIPPED = ("kalmannet-lorenz", "kalmannet-lorenz-rot")
