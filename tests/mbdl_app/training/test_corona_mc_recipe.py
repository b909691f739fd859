"""Recipe `corona-mc` (issue 15 part 1): the shipped CORONA derived onto motion-compensated windows
with output D - L; a quick run writes a verified artifact whose card says how and scores the chain."""

import json

from engines.load import load_artifact
from mbdl_app.training.recipes import get_recipe


def test_quick_corona_mc_recipe_derives_an_artifact_that_says_how(tmp_path):
    folder = get_recipe("corona-mc").run(tmp_path, quick=True)
    card = json.loads((folder / "card.json").read_text())
    assert card["architecture"]["kwargs"]["output"] == "residual"
    assert card["motion_compensation"]["upsample"] == 20 and card["teacher"]["name"] == "corona-ceus"
    assert 0.0 <= card["metrics"]["fig7_chained"]["test_jaccard"] <= 1.0 and "model.onnx" in card["files"]
    engine = load_artifact(folder, backend="onnxruntime")
    assert engine.info.name.endswith("+mc")
