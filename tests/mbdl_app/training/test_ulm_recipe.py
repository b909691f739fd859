"""The ulm-lista recipe: a quick real training run writes a verified super-resolution artifact
that loads as an engine on torch and ONNX Runtime."""

import json

import numpy as np
import pytest

from engines.load import load_artifact
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.ulm import PATCH, QUICK, patch_set


def test_patches_mark_each_true_bubble_on_the_fine_grid():
    data = patch_set(seed=5, n_sims=1, frames=1, field=32)
    n = (32 // PATCH) ** 2
    assert data.x.shape == (n, 1, 2, PATCH, PATCH) and data.y.shape == (n, 8 * PATCH, 8 * PATCH)
    assert int(data.y.sum()) == sum(len(p) for p in data.positions) > 0


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return get_recipe("ulm-lista").run(tmp_path_factory.mktemp("art"), quick=True, quiet=True)


def test_quick_run_writes_a_card_with_localization_metrics(artifact):
    card = json.loads((artifact / "card.json").read_text())
    assert card["task"] == "super-resolution" and card["family"] == "unfolded"
    m = card["metrics"]
    assert 0.0 <= m["test_jaccard"] <= 1.0 and m["threshold"] > 0
    assert "model.onnx" in card["files"]


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_artifact_runs_as_a_super_resolution_engine(artifact, backend):
    engine = load_artifact(artifact, backend)
    assert engine.info.task == "super-resolution"
    n = QUICK.field  # the quick artifact's ONNX frame size
    x = np.zeros((1, 1, 2, n, n), np.float32)
    x[0, 0, 0, 12:16, 12:16] = 3.0
    y = engine(x)
    assert y.shape == (1, 1, 1, 8 * n, 8 * n)
    assert set(np.unique(y)) <= {0.0, 1.0}
