"""The tracking recipes: quick training runs into real artifacts, loaded back as TrackerEngines."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.base import TrackerEngine
from engines.errors import EngineInputError
from engines.load import load_artifact
from mbdl_app.training.artifact import CARD_FIELDS
from mbdl_app.training.recipes import available_recipes, get_recipe
from mbdl_app.training.recipes.tracking import SHIPPED, SequenceBatches


def test_shipped_and_baseline_recipes_are_registered():
    assert set(SHIPPED) | {"kalmannet1-lorenz", "gru-lorenz", "mbrnn-lorenz"} <= set(available_recipes())


def test_sequence_batches_differ_between_stages_and_repeat_within_one():
    y, x = torch.arange(40.0).reshape(40, 1, 1), torch.zeros(40, 1, 1)
    data = SequenceBatches(y, x, batch=4)
    first = data(0, torch.Generator().manual_seed(5))[0]
    assert torch.equal(first, data(0, torch.Generator().manual_seed(5))[0])
    data.stage = 1
    assert not torch.equal(first, data(0, torch.Generator().manual_seed(5))[0])


@pytest.fixture(scope="module")
def rot_artifact(tmp_path_factory):
    return get_recipe("kalmannet-lorenz-rot").run(tmp_path_factory.mktemp("art"), quick=True, quiet=True)


def test_quick_kalmannet_run_writes_a_card_with_held_out_metrics_and_the_ekf_reference(rot_artifact):
    card = json.loads((rot_artifact / "card.json").read_text())
    assert set(CARD_FIELDS) <= set(card) and card["task"] == "tracking"
    assert card["architecture"] == {"name": "kalmannet", "kwargs": {"arch": "arch2"}}
    assert card["model"]["obs"] == "identity"  # the rotation is the mismatch the net must learn
    m = card["metrics"]
    assert np.isfinite(m["test_mse_db"]) and m["test_sequences"] == 2
    assert np.isfinite(m["ekf"]["mse_db"]) and m["ekf"]["run_time_s"] > 0
    assert [s["name"] for s in card["training"]["stages"]] == ["chunks", "full"]


def test_artifact_loads_as_a_tracker_engine_with_covariance_and_rejects_bad_input(rot_artifact):
    engine = load_artifact(rot_artifact, backend="torch")
    assert isinstance(engine, TrackerEngine) and engine.info.family == "dnn-aided"
    engine.reset(2, np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]))
    est = engine.step(np.ones((2, 3)))
    assert est.mean.shape == (2, 3) and est.mean.dtype == np.float64 and est.cov.shape == (2, 3, 3)
    before = [s.clone() for s in engine.state]
    with pytest.raises(EngineInputError, match="shape"):
        engine.step(np.ones((3, 3)))
    assert all(torch.equal(a, b) for a, b in zip(before, engine.state, strict=True))
    bad = np.ones((2, 3))
    bad[1, 2] = np.nan
    assert engine.step(bad).gated.tolist() == [False, True]  # a missing reading: predicted through
