"""The lsparcom recipe: the emitters' variance target, the patch batches, and a quick real training run
that writes a verified artifact loading as a stack engine on torch and ONNX Runtime."""

import json

import numpy as np
import pytest
import torch

from engines.load import load_artifact
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.lsparcom import QUICK, patch_batches, simulate, support_loss


def test_a_stack_gives_correlation_data_a_variance_target_around_the_emitters_and_its_truth():
    s = simulate(2.0, [5, 0], frames=30, field=16)
    assert s.g.shape == s.target.shape == (64, 64) and s.frames.shape == (30, 16, 16)
    on = (s.target > 0).numpy()
    assert float(s.target[s.target > 0].mean()) == pytest.approx(1.0)
    rc = np.floor(s.truth[:, ::-1] / 25.0).astype(int)  # fine pixels of the emitters that blinked
    assert bool(on[rc[:, 0], rc[:, 1]].all())
    near = np.zeros_like(on)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            near[np.clip(rc[:, 0] + dr, 0, 63), np.clip(rc[:, 1] + dc, 0, 63)] = True
    assert not (on & ~near).any()  # the support is their 3 x 3 neighbourhoods, nothing else


def test_patch_batches_are_turned_and_mirrored_copies_of_the_stacks():
    s = simulate(1.0, [6, 0], frames=20, field=20)
    g, t = patch_batches([s], batch=8)(0, torch.Generator().manual_seed(0))
    assert g.shape == t.shape == (8, 64, 64)
    # each patch's values are a patch of the stack's (a rotation keeps the multiset of values)
    assert torch.isin(g[0].flatten(), s.g.flatten()).all()


def test_support_loss_is_mse_on_the_support_and_l1_off_it():
    target = torch.tensor([[0.0, 2.0]])
    assert float(support_loss(torch.tensor([[0.5, 1.0]]), target)) == pytest.approx((0.5 + 1.0) / 2)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return get_recipe("lsparcom").run(tmp_path_factory.mktemp("art"), quick=True, quiet=True)


def test_quick_run_writes_a_card_with_held_out_figures_beside_sparcom(artifact):
    card = json.loads((artifact / "card.json").read_text())
    assert card["task"] == "super-resolution" and card["family"] == "unfolded"
    assert card["architecture"]["name"] == "lsparcom"
    m = card["metrics"]
    assert m["weights"] == {"total": 9058, "free": 1166}
    for method in ("lsparcom", "sparcom_100"):
        for density in ("test_sparse", "test_dense"):
            assert 0.0 <= m[method][density]["jaccard"] <= 1.0
            assert -1.0 <= m[method][density]["image_correlation"] <= 1.0
    assert "model.onnx" in card["files"]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_artifact_runs_as_a_stack_engine(artifact, backend):
    engine = load_artifact(artifact, backend)
    assert engine.info.window == QUICK.frames
    x = simulate(2.0, [7, 0], frames=QUICK.frames, field=QUICK.field).frames[None, :, None]
    y = engine(x.astype(np.float32))
    assert y.shape == (1, 1, 1, 4 * QUICK.field, 4 * QUICK.field) and (y >= 0).all() and y.max() > 0
