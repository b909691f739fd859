"""The sim:ceus recipes: quick runs write artifacts that load as engines in torch and ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from engines.load import load_artifact
from mbdl_app.training.recipes import available_recipes, get_recipe


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("ceus")
    names = ("corona-ceus", "resnet-ceus")
    return {name: get_recipe(name).run(out, quick=True, quiet=True) for name in names}


def test_both_recipes_are_registered():
    assert {"corona-ceus", "resnet-ceus"} <= set(available_recipes())


@pytest.mark.parametrize("name,family", [("corona-ceus", "unfolded"), ("resnet-ceus", "black-box")])
def test_quick_run_writes_a_card_with_metrics_and_model_onnx(artifacts, name, family):
    card = json.loads((artifacts[name] / "card.json").read_text())
    assert card["task"] == "clutter-suppression" and card["family"] == family
    assert card["input"]["window"] == 20
    assert {"weights.safetensors", "model.onnx"} <= set(card["files"])
    assert card["metrics"]["test_mse_S"] > 0
    if name == "corona-ceus":
        assert len(card["metrics"]["test_mse_S_per_layer"]) == 10


@pytest.mark.parametrize("name", ["corona-ceus", "resnet-ceus"])
def test_artifact_runs_as_an_imaging_engine_and_matches_onnxruntime(artifacts, name):
    engine = load_artifact(artifacts[name], backend="torch")
    assert engine.info.task == "clutter-suppression" and engine.info.window == 20
    x = np.random.default_rng(0).normal(size=(1, 20, 2, 16, 16)).astype(np.float32)  # quick: 16 x 16
    every = engine(x)
    assert every.shape == (1, 20, 2, 16, 16)  # the bubbles of every frame of the window
    session = ort.InferenceSession(str(artifacts[name] / "model.onnx"), providers=["CPUExecutionProvider"])
    y = session.run(["y"], {"x": x})[0]
    assert y.shape == every.shape and np.abs(y - every).max() <= 1e-3 * np.abs(every).max()
