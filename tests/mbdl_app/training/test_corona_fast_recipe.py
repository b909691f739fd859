"""Recipe `corona-fast`: the student starts at the teacher's weights; a tiny run writes an artifact
that runs on torch and ONNX Runtime alike and records its teacher and fig6 MSE."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engines.imaging.corona import CORONA
from engines.load import load_artifact
from mbdl_app.training.recipes import get_recipe
from mbdl_app.training.recipes.corona_fast import KWARGS, crop_kernel, student_from_teacher


def test_the_student_starts_at_the_teachers_thresholds_and_central_kernel_taps():
    teacher = CORONA()
    with torch.no_grad():
        for w in teacher.kernels:
            w.normal_(0, 0.1, generator=torch.Generator().manual_seed(w.shape[-1]))
    student = student_from_teacher(teacher, **KWARGS)
    assert student.kernel_sizes == [3] * 10
    for k in range(10):
        torch.testing.assert_close(student.kernels[k], crop_kernel(teacher.kernels[k], 3))
    assert torch.equal(student.a, teacher.a) and torch.equal(student.b, teacher.b)
    with pytest.raises(ValueError, match="cannot crop"):
        crop_kernel(torch.zeros(2, 3, 3), 5)


@pytest.mark.slow
def test_quick_recipe_writes_an_artifact_with_its_teacher_that_runs_on_torch_and_onnxruntime(tmp_path):
    folder = get_recipe("corona-fast").run(tmp_path, quick=True, quiet=True)
    torch_engine = load_artifact(folder, "torch")
    card = torch_engine.card
    assert card["teacher"]["name"] == "corona-ceus" and len(card["teacher"]["sha256"]) == 64
    assert card["architecture"] == {"name": "corona-fast", "kwargs": KWARGS}
    m = card["metrics"]
    assert 0 < m["fig6_mse_S"] and 0 < m["fig6_mse_S_teacher"] and 0 < m["fig6_mse_S_before_finetuning"]
    assert m["latency"]["student_median_ms"] > 0 and m["latency"]["teacher_median_ms"] > 0
    x = (0.3 * np.random.default_rng(0).standard_normal((2, 20, 2, 16, 16))).astype(np.float32)
    np.testing.assert_allclose(load_artifact(folder, "onnxruntime")(x), torch_engine(x), atol=1e-4, rtol=1e-3)


def test_shipped_corona_fast_meets_issue_15s_mse_on_fig6s_test_set_as_its_card_says():
    import exported_models
    from mbdl_app.training.recipes.corona_fast import fig6_mse, fig6_set

    engine = load_artifact(exported_models.ROOT / "corona-fast", "torch")
    mse = fig6_mse(engine.module, fig6_set(quick=False))
    assert mse <= 0.12
    assert mse == pytest.approx(engine.card["metrics"]["fig6_mse_S"], rel=1e-3)
    assert engine.card["teacher"]["name"] == "corona-ceus"
