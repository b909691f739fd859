"""Recipe `corona-lite` (issue 15 part 2): a 5-layer student taken from corona-fast's layers; a tiny
run writes an artifact that runs on torch and ONNX Runtime alike; the shipped one scores its card's
fig6 MSE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.imaging.corona_fast import CoronaFast
from engines.load import load_artifact
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.corona_fast import KWARGS, LITE_KWARGS, LITE_LAYERS, student_from_teacher


def test_the_lite_student_takes_the_picked_teacher_layers():
    teacher = CoronaFast(**KWARGS)
    with torch.no_grad():
        for k, w in enumerate(teacher.kernels):
            w.fill_(float(k))
        teacher.a.copy_(torch.arange(10.0))
        teacher.b.copy_(-torch.arange(10.0))
    student = student_from_teacher(teacher, LITE_LAYERS, **LITE_KWARGS)
    assert student.n_layers == 5
    for j, k in enumerate(LITE_LAYERS):
        assert torch.equal(student.kernels[j], teacher.kernels[k])
        assert float(student.a.detach()[j]) == k and float(student.b.detach()[j]) == -k
    with pytest.raises(ValueError, match="cannot take teacher layers"):
        student_from_teacher(teacher, (0, 1, 2), **LITE_KWARGS)


@pytest.mark.slow
def test_quick_lite_recipe_writes_an_artifact_that_runs_on_torch_and_onnxruntime_alike(tmp_path):
    folder = get_recipe("corona-lite").run(tmp_path, quick=True, quiet=True)
    torch_engine = load_artifact(folder, "torch")
    card = torch_engine.card
    assert card["teacher"]["name"] == "corona-fast" and len(card["teacher"]["sha256"]) == 64
    assert card["architecture"] == {"name": "corona-fast", "kwargs": LITE_KWARGS}
    m = card["metrics"]
    assert 0 < m["fig6_mse_S"] and 0 < m["fig6_mse_S_teacher"]
    x = (0.3 * np.random.default_rng(0).standard_normal((2, 20, 2, 16, 16))).astype(np.float32)
    np.testing.assert_allclose(load_artifact(folder, "onnxruntime")(x), torch_engine(x), atol=1e-4, rtol=1e-3)


def test_shipped_corona_lite_scores_on_fig6s_test_set_what_its_card_says_and_runs_alike_on_ort():
    """Its fig6 MSE (0.1176 on the card) meets issue 15's 0.12: the card's figure is recomputed here,
    and that fine-tuning improved on the picked layers."""
    import exported_models
    from mbdl_app.training.recipes.corona_fast import fig6_mse, fig6_set

    engine = load_artifact(exported_models.ROOT / "corona-lite", "torch")
    assert engine.module.n_layers == 5
    mse = fig6_mse(engine.module, fig6_set(quick=False))
    m = engine.card["metrics"]
    assert mse == pytest.approx(m["fig6_mse_S"], rel=1e-3)
    assert mse < m["fig6_mse_S_before_finetuning"] and mse <= 0.12
    x = (0.3 * np.random.default_rng(1).standard_normal((1, 20, 2, 128, 128))).astype(np.float32)
    np.testing.assert_allclose(load_artifact(exported_models.ROOT / "corona-lite", "onnxruntime")(x),
                               engine(x), atol=1e-4, rtol=1e-3)
