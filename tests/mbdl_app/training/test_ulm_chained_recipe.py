"""The ulm-chained recipe (ULM fine-tuned on CORONA's output, issue 15): CORONA runs on consecutive
blocks as a session does, the held-out frames are fig7's, and a quick real training run writes a
verified super-resolution artifact with the card fields that say how it was made."""

import json

import numpy as np
import pytest

from engines.load import load_artifact
from exported_models import ROOT
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.ulm_chained import BLOCK, QUICK, TOLERANCE, held_out, separate, teacher


def test_the_teacher_separates_consecutive_blocks_of_every_frame():
    corona, _ = teacher(ROOT)
    D = np.random.default_rng(0).normal(size=(2 * BLOCK, 2, 8, 8)).astype(np.float32)
    S = separate(corona, D)
    assert S.shape == D.shape and np.isfinite(S).all()
    np.testing.assert_allclose(S[BLOCK:], separate(corona, D[BLOCK:]), atol=1e-6)  # blocks are independent
    with pytest.raises(Exception, match="multiple of CORONA's window"):
        separate(corona, D[:BLOCK + 1])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return get_recipe("ulm-chained").run(tmp_path_factory.mktemp("art"), quick=True, quiet=True)


def test_quick_run_writes_a_card_saying_how_it_was_made(artifact):
    card = json.loads((artifact / "card.json").read_text())
    assert card["task"] == "super-resolution" and card["architecture"]["name"] == "ulm-lista"
    assert card["training"]["teacher"] == "corona-ceus" and "ulm-lista" in card["training"]["start"]
    m = card["metrics"]
    assert 0.0 <= m["test_jaccard"] <= 1.0 and m["threshold"] > 0 and 0 < m["input_gain"] < 1
    assert m["tolerance_px"] == TOLERANCE and "model.onnx" in card["files"]
    engine = load_artifact(artifact, "onnxruntime")
    y = engine(np.zeros((1, 1, 2, QUICK.field, QUICK.field), np.float32))
    assert y.shape == (1, 1, 1, 8 * QUICK.field, 8 * QUICK.field)


def test_held_out_frames_are_fig7s_test_frames_through_corona():
    from mbdl_app.experiments.fig7 import frames, load_module, separated

    corona, sha = teacher(ROOT)
    mine = held_out(corona, sha, seed=21, frames=BLOCK, field=16, cache=False)
    fig7 = frames(21, BLOCK, 16)
    assert all(np.array_equal(a, b) for a, b in zip(mine.positions, fig7.positions, strict=True))
    reference = separated(load_module("corona-ceus"), fig7.D)  # fig7 runs CORONA on torch
    np.testing.assert_allclose(mine.x.numpy(), reference.numpy(), atol=1e-4)


def test_the_centre_recipe_sees_fig7_slidings_residual_and_says_so(tmp_path):
    """ulm-chained-centre: D - L of CORONA's centred sliding windows (fig7 --sliding's input), the
    same held-out frames; a quick real run writes a card naming that input."""
    from engines.imaging.clutter import separated_sliding
    from mbdl_app.experiments.fig7 import frames, load_module
    from mbdl_app.training.recipes.ulm_chained import CENTRE_LAG

    module = load_module("corona-ceus")
    mine = held_out(module, "sha", seed=21, frames=BLOCK, field=16, cache=False, mode="centre-residual")
    fig7 = frames(21, BLOCK + CENTRE_LAG, 16)
    reference = separated_sliding(module, fig7.D, BLOCK, residual=True)
    np.testing.assert_allclose(mine.x.numpy(), reference.numpy(), atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(mine.positions, fig7.positions[:BLOCK], strict=True))
    folder = get_recipe("ulm-chained-centre").run(tmp_path, quick=True, quiet=True)
    card = json.loads((folder / "card.json").read_text())
    assert "D - L" in card["input"]["meaning"] and "centre frame" in card["training"]["data"]
    assert 0.0 <= card["metrics"]["test_jaccard"] <= 1.0
