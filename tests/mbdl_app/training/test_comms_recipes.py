"""The comms recipes write artifacts that load as detectors on torch and ONNX Runtime alike."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drivers.sim.isi import IsiParams, IsiSimulator
from engines.load import load_artifact
from mbdl_app.training.recipes import get_recipe


@pytest.mark.parametrize("name", ["viterbinet-isi", "sbrnn-isi"])
def test_a_quick_recipe_writes_a_card_with_held_out_ser_and_an_onnx_graph_that_detects_alike(name, tmp_path):
    folder = get_recipe(name).run(tmp_path, quick=True, quiet=True)
    card = json.loads((folder / "card.json").read_text())
    m = card["metrics"]
    assert card["task"] == "symbol-detection" and card["channel"]["block"] == 500
    assert 0 <= m["test_ser"] <= 1 and m["test_symbols"] == 2000
    assert m["bcjr_uncertain_csi_ser"] > m["bcjr_perfect_csi_ser"]
    assert "model.onnx" in card["files"] and card["onnx"]["inputs"][0]["shape"] == ["N", 500]
    y, _, _ = IsiSimulator(IsiParams(seed=4)).blocks(2)
    soft = {}
    for backend in ("torch", "onnxruntime"):
        d = load_artifact(folder, backend)
        assert d.info.backend == backend and d.info.task == "symbol-detection"
        d.reset(2)
        soft[backend] = d.step(y).mean
    np.testing.assert_allclose(soft["onnxruntime"], soft["torch"], atol=1e-5)
