"""Recipes of the symbol detectors of seed Fig. 9: `bcjrnet-isi`, `viterbinet-isi`, `sbrnn-isi`.

Channel (ANCHORS.md "Digital communications"): BPSK through the L = 4 exponential ISI channel
h_l = exp(-gamma (l - 1)) in AWGN, here gamma = GAMMA = 0.2 at SNR = SNR_DB = 8 dB (the
`sim:isi` defaults and the shipped `comms` session). Training data: the seed's
n_t = 5,000 labelled symbols (one stream, seed TRAIN_SEED); held-out test: 50,000 symbols
(100 blocks of 500, seed TEST_SEED) -- the anchors' sizes.

- bcjrnet-isi / viterbinet-isi: the learned factor graph (engines/comms/learned_factor_graph.py),
  the 1-100-50-16 classifier trained by cross entropy (Adam 3e-3, 1,500 minibatches of 256; about
  5 s on one core), p(y) a 16-component Gaussian mixture, transitions from label counts; the
  recursion is sum-product (BCJRNet) or max-product (ViterbiNet). Same seed, same weights.
- sbrnn-isi: the SBRNN (engines/comms/sbrnn.py; 3 x 80 bidirectional LSTM, windows of 20 sliding
  by 10), Adam 1e-3, 300 minibatches of 32 windows (about 10 s on one core; measured at gamma 0.5,
  6 dB: the held-out SER levels off after ~250).

Cards hold the held-out SER of the detector beside the model-based BCJR with perfect CSI and
with CSI uncertainty (sigma_e^2 = 0.1 per 500-symbol block) on the same test symbols.
`fig9` (mbdl_app/experiments/fig9.py) trains the same nets per channel for the figure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drivers.sim.isi import IsiParams, IsiSimulator
from engines.base import EngineInfo
from engines.comms.learned_factor_graph import FitConfig, LearnedFactors, ModuleFactors, fit_factors
from engines.comms.sbrnn import SBRNN, fit_sbrnn
from engines.comms.sum_product import (
    Trellis,
    TrellisDetector,
    build_bcjr,
    symbol_error_rate,
)
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.trainer import TrainConfig, Trainer, TrainResult

GAMMA, SNR_DB, MEMORY, BLOCK = 0.2, 8.0, 4, 500
TRAIN_SYMBOLS = 5000
TRAIN_SEED, TEST_SEED = 16, 17
CSI_ERROR = 0.1
SBRNN_STEPS = 300
LFG_KWARGS = {"memory": MEMORY}
SBRNN_KWARGS = {"block": BLOCK, "window": 20, "stride": 10, "hidden": 80, "layers": 3}


@dataclass(frozen=True)
class Size:
    train_symbols: int
    test_blocks: int
    lfg_steps: int
    sbrnn_steps: int


FULL = Size(train_symbols=TRAIN_SYMBOLS, test_blocks=100, lfg_steps=1500, sbrnn_steps=SBRNN_STEPS)
QUICK = Size(train_symbols=1000, test_blocks=4, lfg_steps=20, sbrnn_steps=3)


def channel_params(seed: int) -> IsiParams:
    return IsiParams(memory=MEMORY, gamma=GAMMA, snr_db=SNR_DB, block=BLOCK, seed=seed)


def model_based_ser(y: np.ndarray, s: np.ndarray, csi_error: float) -> float:
    """SER of the model-based BCJR on test blocks y, s (n, B): perfect CSI or sigma_e^2 = csi_error."""
    d = build_bcjr(memory=MEMORY, gamma=GAMMA, snr_db=SNR_DB, block=y.shape[1], csi_error=csi_error)
    d.reset(len(y))
    return symbol_error_rate(d.step(y).mean, s, d.alphabet)


@dataclass
class CommsRecipe(Recipe):
    """One detector trained on the 5,000 training symbols of the recipe channel (module docstring)."""

    name: str
    description: str
    arch: str  # "learned-factor-graph" | "sbrnn"
    semiring: str = "sum"
    seed: int = 0

    def kwargs(self) -> dict[str, Any]:
        return LFG_KWARGS if self.arch == "learned-factor-graph" else SBRNN_KWARGS

    def build(self, quick: bool) -> Plan:
        size = QUICK if quick else FULL
        y, s = IsiSimulator(channel_params(TRAIN_SEED)).symbols(size.train_symbols)
        y_test, s_test, _ = IsiSimulator(channel_params(TEST_SEED)).blocks(size.test_blocks)
        self._train = (torch.from_numpy(y).float(), torch.from_numpy(s))
        self._size = size
        model = LearnedFactors(**LFG_KWARGS) if self.arch == "learned-factor-graph" else SBRNN(**SBRNN_KWARGS)
        trellis = Trellis(MEMORY)

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            detector = self.detector(trainer.model, trellis)
            detector.reset(len(y_test))
            start = time.perf_counter()
            soft = detector.step(y_test).mean
            wall = time.perf_counter() - start
            return {"test_ser": symbol_error_rate(soft, s_test, trellis.alphabet),
                    "test_symbols": int(s_test.size), "test_seed": TEST_SEED,
                    "test_run_time_s": round(wall, 3),
                    "bcjr_perfect_csi_ser": model_based_ser(y_test, s_test, 0.0),
                    "bcjr_uncertain_csi_ser": model_based_ser(y_test, s_test, CSI_ERROR),
                    "csi_error": CSI_ERROR}

        steps = size.lfg_steps if self.arch == "learned-factor-graph" else size.sbrnn_steps
        card = {
            "task": "symbol-detection",
            "family": "dnn-aided" if self.arch == "learned-factor-graph" else "black-box",
            "description": self.description,
            "architecture": {"name": self.arch, "kwargs": self.kwargs()},
            "channel": {"memory": MEMORY, "gamma": GAMMA, "snr_db": SNR_DB, "channel": "awgn",
                        "taps": channel_params(0).nominal_taps().tolist(), "alphabet": [-1.0, 1.0],
                        "block": BLOCK},
            "input": {"shape": ["N", BLOCK], "dtype": "float32",
                      "meaning": "blocks of received samples y_i (sim:isi Sample values)"},
            "output": {"shape": ["N", BLOCK], "dtype": "float32",
                       "meaning": ("the detector: E[s_i | y]; the graph: "
                                   + ("log p(y_i | c) (N, B, 16)" if self.arch == "learned-factor-graph"
                                      else "P(s_i = +1 | y) (N, B)"))},
            "training": {"data": f"{size.train_symbols} symbols of sim:isi gamma={GAMMA} snr={SNR_DB} dB "
                                 f"(seed {TRAIN_SEED}); test {size.test_blocks} blocks of {BLOCK} "
                                 f"(seed {TEST_SEED})",
                         "steps": steps},
        }
        if self.arch == "learned-factor-graph":
            card["semiring"] = self.semiring
        return Plan(model=model, loss_fn=F.cross_entropy, train_data=self._train, val_data=None,
                    config=TrainConfig(max_steps=max(steps, 1), batch_size=32, device="cpu"),
                    evaluate=evaluate, card=card)

    def detector(self, module: torch.nn.Module, trellis: Trellis):
        """The detector the artifact becomes, around the trained module (torch)."""
        from engines.comms.sbrnn import SlidingDetector

        family = "black-box" if isinstance(module, SBRNN) else "dnn-aided"
        info = EngineInfo(name=self.name, family=family, task="symbol-detection", backend="torch",
                          window=1, in_shape=(BLOCK,), out_shape=(BLOCK,))
        if isinstance(module, SBRNN):
            return SlidingDetector(info, module.eval(), trellis.alphabet)
        return TrellisDetector(info, ModuleFactors(module.eval()), trellis,
                               module.log_transition[0].double().numpy(), self.semiring)

    def fit_stages(self, trainer: Trainer, plan: Plan) -> list[TrainResult]:
        """The detector's own fit (fit_factors / fit_sbrnn) on the 5,000 training symbols."""
        torch.set_num_threads(1)
        y, s = self._train
        g = torch.Generator().manual_seed(self.seed)
        start = time.perf_counter()
        if isinstance(trainer.model, SBRNN):
            losses = fit_sbrnn(trainer.model, y, s, (-1.0, 1.0), self._size.sbrnn_steps, generator=g)
        else:
            losses = fit_factors(trainer.model, y[None], s[None], Trellis(MEMORY),
                                 FitConfig(steps=self._size.lfg_steps), g)
        steps = plan.card["training"]["steps"]
        # training cross entropy every 100 (factor graph) or 50 (SBRNN) steps
        plan.card["training"]["loss_curve"] = [round(v, 5) for v in losses]
        return [TrainResult("fit", None, None, steps, time.perf_counter() - start, (), False)]


RECIPES = (
    CommsRecipe("bcjrnet-isi", "BCJRNet: the learned factor graph (1-100-50-16 classifier, GMM p(y)) with "
                "sum-product, seed Fig. 9", "learned-factor-graph", "sum"),
    CommsRecipe("viterbinet-isi", "ViterbiNet: the learned factor graph with max-product (Viterbi); the "
                "weights of bcjrnet-isi (same data and seed)", "learned-factor-graph", "max"),
    CommsRecipe("sbrnn-isi", "SBRNN: stacked bidirectional LSTM (3 x 80) on sliding windows, seed Fig. 9's "
                "black-box baseline", "sbrnn"),
)
