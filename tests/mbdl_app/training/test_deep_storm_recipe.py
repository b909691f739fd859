"""The deep-storm recipe: its patches mark every true emitter on the 8x grid, and a quick real training
run writes a verified super-resolution artifact with held-out figures that loads on torch and ONNX
Runtime, the two agreeing."""

import json

import numpy as np
import pytest

from engines.load import load_artifact
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.deep_storm import PATCH, QUICK, patches, simulate_frames


def test_patches_mark_each_true_emitter_in_its_fine_pixel():
    data = simulate_frames(seed=5, densities=(2.0,), n_sims=1, frames=2, field=32)
    x, y = patches(data)
    n = 2 * (32 // PATCH) ** 2
    assert x.shape == (n, 1, 1, PATCH, PATCH) and y.shape == (n, 8 * PATCH, 8 * PATCH)
    assert int(y.sum()) == sum(len(p) for p in data.positions) > 0
    # the first patch's emitters: fine pixel floor(x / 12.5 nm)
    p = data.positions[0]
    p = p[(p < PATCH * 100.0).all(1)]
    col, row = np.floor(p / 12.5).astype(int).T
    assert (y[0].numpy()[row, col] > 0).all()
    np.testing.assert_array_equal(x[0, 0, 0].numpy(), data.frames[0, :PATCH, :PATCH])


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return get_recipe("deep-storm").run(tmp_path_factory.mktemp("art"), quick=True, quiet=True)


def test_quick_run_writes_a_card_with_both_methods_held_out_figures(artifact):
    card = json.loads((artifact / "card.json").read_text())
    assert (card["task"], card["family"], card["architecture"]["name"]) == ("super-resolution", "black-box",
                                                                            "deep-storm")
    m = card["metrics"]
    assert m["threshold"] > 0 and m["tolerance_nm"] == 250.0
    for regime in ("sparse", "dense"):
        for scores in (m[regime], m[regime]["smlm_fit"]):
            assert 0.0 <= scores["jaccard"] <= 1.0 and 0.0 <= scores["recall"] <= 1.0
            assert scores["tp"] + scores["fn"] == m[regime]["emitters"] > 0
    assert "model.onnx" in card["files"] and card["onnx"]["opset"] == 17


def test_artifact_runs_on_torch_and_onnxruntime_alike(artifact):
    n = QUICK.field
    x = np.random.default_rng(0).poisson(40, (2, 1, 1, n, n)).astype(np.float32) * 2 + 100
    x[:, 0, 0, 10:12, 20:22] += 600  # one bright spot
    y_torch = load_artifact(artifact, "torch")(x)
    y_ort = load_artifact(artifact, "onnxruntime")(x)
    assert y_torch.shape == y_ort.shape == (2, 1, 1, 8 * n, 8 * n)
    assert np.linalg.norm(y_ort - y_torch) <= 1e-5 * max(np.linalg.norm(y_torch), 1e-6) + 1e-6
