"""Joint fine-tune of CORONA and ULM end to end (issue 15, part 1): `corona-ulm` + `ulm-chained`.

A COPY of the shipped `corona-ceus` (clutter separator) and the shipped `ulm-lista` (its input
gain set to CORONA's measured gain, as in `ulm-chained`) trained together on the live chain:
a fresh 32 x 32 x 20 sim:ceus window (data, tissue included; simulator seeds [TRAIN_SEED, j],
never fig7's held-out 21 / 22) -> CORONA -> its bubbles S of every frame -> ULM on `CROPS`
random CROP x CROP crops of random frames of S (CORONA ran on the whole window, so a crop keeps
its context) -> ULM's localization loss (the `ulm-lista` recipe's smoothed MSE against the true
positions on the 8x grid) + `CORONA_WEIGHT` x CORONA's own MSE(S, data - tissue) / mean |S|^2
(so that it stays a separator). The weight is set once, on the first batch, so that CORONA's term
is CORONA_SHARE of the ULM loss there. Both get Adam (CORONA lr `CORONA_LR`, ULM `ULM_LR`, grad
clip 1).

ULM's envelope sqrt(I^2 + Q^2) has an epsilon inside the sqrt (engines.imaging.ulm.ENVELOPE_EPS):
without it the gradient is NaN at CORONA's exact zeros and no CORONA gradient is finite.

Scores: fig7's protocol exactly (ulm_chained.fig7_protocol: threshold on 20 frames of seed 22,
test on 120 frames of seed 21, CORONA in consecutive blocks of 20, tolerance 0.5 pixel), with
the jointly trained CORONA in front of the jointly trained ULM.

Result (measured 2026-12-06, `nice -n 10 python -m mbdl_app.training.recipes.corona_ulm 840 DIR`,
one torch thread, load average 8 -> 1.4): 1,140 steps in 848 s (gain 0.573, CORONA weight 9.4e-5);
the chain's held-out fig7 score went from 0.268 / 35.4 um (step 0: the shipped pair, ULM with the
gain) through 0.24-0.30 (every 100 steps) to 0.309 / 37.0 um (precision 0.55, recall 0.41; tp/fp/fn
212/172/302). The issue's 0.55 / 35 um is NOT met (Jaccard short by 0.24, RMSE 2 um over), and
+0.04 Jaccard is within the run's step-to-step spread with a worse RMSE, so no artifact is shipped
and the recipe is not registered with `mbdl train`. A 300-step pilot at CORONA lr 1e-4 stayed at
0.24-0.27 (ulm_chained's docstring). CORONA's capacity (a learned pair of kernels per layer and two
thresholds) is the likely limit: the next step is a larger separator trained for ULM's loss.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from drivers.sim.ceus import CeusParams, CeusSimulator
from engines.imaging.ulm import BUBBLE_AMP, FACTOR, build_network, true_positions
from mbdl_app.training.errors import TrainingError
from mbdl_app.training.recipes.ulm import ARCH, smoothed_mse
from mbdl_app.training.recipes.ulm_chained import (
    BLOCK,
    TEST_SEED,
    THRESHOLD_SEED,
    TRAIN_SEED,
    ChainedSet,
    _gain,
    _targets,
    fig7_protocol,
)

CROP, CROPS = 16, 8
CORONA_LR, ULM_LR = 1e-3, 5e-4
CORONA_SHARE = 0.1


@dataclass(frozen=True)
class JointSize:
    field: int
    steps: int
    test_frames: int
    threshold_frames: int
    eval_every: int


FULL = JointSize(field=32, steps=100_000, test_frames=120, threshold_frames=20, eval_every=100)
QUICK = JointSize(field=16, steps=2, test_frames=20, threshold_frames=20, eval_every=2)


def load_start(artifacts: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Copies of the shipped corona-ceus and ulm-lista torch modules."""
    from engines.load import load_artifact

    corona = load_artifact(artifacts / "corona-ceus", backend="torch").module
    ulm = build_network(ARCH)
    ulm.load_state_dict(load_artifact(artifacts / "ulm-lista", backend="torch").module.state_dict())
    return corona, ulm


def window(seed: list[int] | int, field: int, frames: int, params_seed: int) -> dict[str, Any]:
    sim = CeusSimulator(CeusParams(height=field, width=field, seed=params_seed), seed=seed)
    f = sim.frames(frames)
    pos = [true_positions(p, (field, field)) for p in f["positions"]]
    return {"D": torch.from_numpy(f["data"]), "S": torch.from_numpy(f["data"] - f["tissue"]),
            "positions": pos, "y": torch.from_numpy(_targets(pos, field))}


def separate(corona: torch.nn.Module, D: torch.Tensor) -> torch.Tensor:
    """CORONA's bubbles (n, 2, h, w) of D in consecutive blocks of BLOCK frames (as fig7 and a session)."""
    if len(D) % BLOCK:
        raise TrainingError(f"corona-ulm: {len(D)} frames is not a multiple of CORONA's window {BLOCK}")
    with torch.no_grad():
        return torch.cat([corona(D[a:a + BLOCK][None])[0] for a in range(0, len(D), BLOCK)])


def held_out(size: JointSize) -> dict[str, dict[str, Any]]:
    """fig7's frames: one simulation of CeusParams(seed) with its own default stream."""
    return {name: window(None, size.field, n, seed) for name, seed, n in
            (("threshold", THRESHOLD_SEED, size.threshold_frames), ("test", TEST_SEED, size.test_frames))}


def chain_scores(corona, ulm, sets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """fig7's protocol on the chain corona -> ulm (sets ulm's localizer threshold)."""
    was = ulm.intensity_output
    ulm.intensity_output = True
    made = {k: ChainedSet(separate(corona, s["D"])[:, None], s["y"], s["positions"], np.zeros(0))
            for k, s in sets.items()}
    result = fig7_protocol(ulm, made["threshold"], made["test"])
    ulm.intensity_output = was
    return result


def train_joint(artifacts: Path, size: JointSize, wall_s: float, out: Path | None = None, log=print,
                checkpoint: Path | None = None) -> dict[str, Any]:
    """Train for `size.steps` steps or `wall_s` seconds; returns the history and the final scores."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    corona, ulm = load_start(artifacts)
    first = window([TRAIN_SEED, 10_000], size.field, BLOCK, TRAIN_SEED)
    with torch.no_grad():
        gain = float(np.median(_gain(separate(corona, first["D"]).numpy(), first["S"].numpy())))
    ulm.scale.fill_(BUBBLE_AMP * gain)
    ulm.intensity_output = True
    sets = held_out(size)
    history = [{"step": 0, **chain_scores(corona, ulm, sets)}]
    log(f"step 0: {history[-1]['test_jaccard']} / {history[-1]['test_rmse_um']} um")
    opt = torch.optim.Adam([{"params": corona.parameters(), "lr": CORONA_LR},
                            {"params": ulm.solver.parameters(), "lr": ULM_LR}])
    gen = torch.Generator().manual_seed(0)
    weight = None
    started = time.time()
    step = 0
    while step < size.steps and time.time() - started < wall_s:
        w = window([TRAIN_SEED, step], size.field, BLOCK, TRAIN_SEED)
        S = corona(w["D"][None])[0]  # (T, 2, h, w)
        k = torch.randint(0, BLOCK, (CROPS,), generator=gen).tolist()
        crop = min(CROP, size.field)
        r = torch.randint(0, size.field - crop + 1, (CROPS,), generator=gen).tolist()
        c = torch.randint(0, size.field - crop + 1, (CROPS,), generator=gen).tolist()
        x = torch.stack([S[i, :, a:a + crop, b:b + crop] for i, a, b in zip(k, r, c, strict=True)])[:, None]
        y = torch.stack([w["y"][i, FACTOR * a:FACTOR * (a + crop), FACTOR * b:FACTOR * (b + crop)]
                         for i, a, b in zip(k, r, c, strict=True)])
        loss_ulm = smoothed_mse(ulm(x), y)
        loss_sep = F.mse_loss(S, w["S"]) / w["S"].square().mean()
        if weight is None:
            weight = CORONA_SHARE * float(loss_ulm.detach()) / max(float(loss_sep.detach()), 1e-12)
        loss = loss_ulm + weight * loss_sep
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in corona.parameters() if p.grad is not None]
        if not grads or not all(torch.isfinite(g).all() for g in grads):
            raise TrainingError(f"corona-ulm: a non-finite CORONA gradient at step {step}")
        torch.nn.utils.clip_grad_norm_([*corona.parameters(), *ulm.solver.parameters()], 1.0)
        opt.step()
        step += 1
        if step % size.eval_every == 0:
            history.append({"step": step, "wall_s": round(time.time() - started, 1),
                            "loss_ulm": float(loss_ulm), "loss_sep": float(loss_sep),
                            **chain_scores(corona, ulm, sets)})
            log(f"step {step} ({history[-1]['wall_s']} s): {history[-1]['test_jaccard']} / "
                f"{history[-1]['test_rmse_um']} um, "
                f"loss {float(loss_ulm):.3g} + {weight:.3g} x {float(loss_sep):.3g}")
            if checkpoint is not None:
                torch.save({"corona": corona.state_dict(), "ulm": ulm.state_dict(), "step": step}, checkpoint)
    final = chain_scores(corona, ulm, sets)
    result = {"steps": step, "wall_s": round(time.time() - started, 1), "gain": gain, "weight": weight,
              "start": history[0], "final": final, "history": history}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"corona": corona.state_dict(), "ulm": ulm.state_dict(), "step": step}, out / "joint.pt")
        (out / "joint.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return {**result, "corona": corona, "ulm": ulm}


if __name__ == "__main__":
    import sys

    from exported_models import ROOT

    wall = float(sys.argv[1]) if len(sys.argv) > 1 else 600.0
    res = train_joint(ROOT, FULL, wall, Path(sys.argv[2]) if len(sys.argv) > 2 else None,
                      log=lambda m: print(m, flush=True),
                      checkpoint=Path("/work/team/logs/corona-ulm-ckpt.pt"))
    print(json.dumps({k: v for k, v in res.items() if k not in ("corona", "ulm", "history")}, indent=1))
