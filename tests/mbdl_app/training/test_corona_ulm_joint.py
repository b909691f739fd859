"""The joint CORONA + ULM fine-tune (issue 15): the envelope's gradient is finite at CORONA's exact
zeros, a tiny real joint run moves CORONA (every CORONA gradient finite) and scores the chain by
fig7's protocol, and fig7's --separator needs the ULM trained with it."""

import pytest
import torch

from engines.imaging.ulm import envelope
from exported_models import ROOT
from mbdl_app.training.recipes.corona_ulm import QUICK, load_start, train_joint


def test_the_envelope_has_a_finite_gradient_at_exact_zeros_and_keeps_its_values():
    x = torch.zeros(2, 1, 2, 3, 3)
    x[0, 0, 0, 1, 1] = 3.0
    x.requires_grad_(True)
    e = envelope(x)
    e.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert float(e[0, 1, 1]) == pytest.approx(3.0, abs=1e-6) and float(e.abs().max()) < 3.0 + 1e-6
    assert float(e[1].max()) < 1e-6


def test_a_tiny_joint_run_moves_corona_and_scores_the_chain():
    before = {k: v.clone() for k, v in load_start(ROOT)[0].state_dict().items()}
    result = train_joint(ROOT, QUICK, wall_s=60)
    assert result["steps"] == QUICK.steps and result["weight"] > 0 and 0 < result["gain"] < 1
    after = result["corona"].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # CORONA itself was trained
    for scores in (result["start"], result["final"]):
        assert 0.0 <= scores["test_jaccard"] <= 1.0 and scores["threshold"] > 0


def test_fig7_separator_needs_the_ulm_trained_with_it(tmp_path):
    from mbdl_app.experiments.fig7 import run_fig7

    with pytest.raises(ValueError, match="--separator .*needs --chained"):
        run_fig7(tmp_path, quick=True, separator=str(tmp_path))
