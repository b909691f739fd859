"""The fine-tune recipes of issue 17 (kalmannet-lorenz-ft / -drop): a quick run writes an artifact
whose card holds the independent-set figures at 0 / 10 / 50 % missing; the training step on a
missing observation is exactly the runtime's (gating.LearnedGate's coast)."""

from __future__ import annotations

import json

import numpy as np
import torch

from engines.tracking.learned import LearnedTracker
from engines.tracking.ssm import LorenzSSM
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.tracking import SETTINGS, X0
from mbdl_app.training.recipes.tracking_finetune import DropoutBatches, StartedKalmanNet, drop_half


def test_quick_drop_recipe_writes_a_card_with_missing_figures(tmp_path):
    folder = get_recipe("kalmannet-lorenz-drop").run(tmp_path, quick=True, quiet=True)
    card = json.loads((folder / "card.json").read_text())
    ind = card["metrics"]["independent"]
    assert set(ind["kalmannet"]) == {"0", "0.1", "0.5"} and set(ind["ekf"]) == {"0", "0.1", "0.5"}
    assert all(np.isfinite(r["mse_db"]) for r in ind["kalmannet"].values())
    assert "lose" in card["training"]["validation_metric"] and card["training"]["init"].startswith("exported")
    assert (folder / "model.onnx").is_file()


def test_training_step_on_a_missing_row_is_the_runtime_coast():
    torch.manual_seed(0)
    net = StartedKalmanNet(LorenzSSM(**(SETTINGS["lorenz"].model | {"q2": 0.0})), x0=X0).eval()
    y = torch.randn(2, 6, 3) * 5 + 10
    y[0, 3] = float("nan")
    z0 = torch.tensor([[1.0, 2.0, 20.0], [-3.0, -2.0, 25.0]])
    with torch.no_grad():
        state = net.init_state(torch.cat((z0[:, None], y), 1))  # row 0 is z0
        out = [net.step(state, z0)[1]]
        state = net.init_state(2, z0)
        for t in range(6):
            state, m = net.step(state, y[:, t])
            out.append(m)
    engine = LearnedTracker("t", "dnn-aided", net)
    engine.reset(2, z0.double().numpy())
    ref = [engine.step(y[:, t].double().numpy()) for t in range(6)]
    assert bool(ref[3].gated[0]) and not ref[3].gated[1]
    got = torch.stack(out[1:], 1).double().numpy()
    assert np.allclose(got, np.stack([r.mean for r in ref], 1), atol=1e-5)


def test_drop_masks_keep_z0_and_half_the_batch():
    y = torch.zeros(8, 50, 3)
    v = drop_half(y, 0.5, 1)
    lost = ~torch.isfinite(v).all(-1)
    assert not lost[:4].any() and lost[4:].float().mean() > 0.3 and not lost[:, 0].any()
    batches = DropoutBatches(y, y, 8, 0.6)
    yb, _ = batches(0, torch.Generator().manual_seed(3))
    lost = ~torch.isfinite(yb).all(-1)
    assert not lost[:, 0].any() and 0 < lost.float().mean() < 0.3
