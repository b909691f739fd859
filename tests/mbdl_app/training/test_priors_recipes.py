"""Recipes `dncnn` and `vae-digits` (seed Examples 20-21) train on data shipped inside installed packages and
write complete artifacts (card with how and held-out scores, safetensors, model.onnx); `mbdl reproduce pnp`
and `mbdl reproduce csgm` write their tables and figures. Tiny configurations: seconds."""

import json

import pytest

pytest.importorskip("skimage")
pytest.importorskip("sklearn")


@pytest.mark.parametrize("name", ["dncnn", "vae-digits"])
def test_quick_recipe_writes_a_verified_artifact_with_onnx_and_held_out_scores(tmp_path, name):
    from engines.load import load_artifact
    from mbdl_app.training.recipes import get_recipe

    folder = get_recipe(name).run(tmp_path, quick=True, quiet=True)
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    assert {"weights.safetensors", "model.onnx"} <= set(card["files"]) and card["training"]["recipe"] == name
    assert card["metrics"] and "onnx" in card
    assert load_artifact(folder, backend="onnxruntime") is not None


def test_quick_reproduce_pnp_writes_the_psnr_table_for_every_method(tmp_path):
    from mbdl_app.experiments.pnp import run_pnp

    result = run_pnp(tmp_path, quick=True, bm3d=False)
    held = result["psnr_db"]["denoise-camera"]
    assert {"observed", "tv-admm", "pnp-admm", "pnp-hqs", "dncnn-alone"} <= set(held)
    assert set(result["psnr_db"]) == {"denoise-camera", "deblur-microscopy", "deblur-ultrasound"}
    assert (tmp_path / "pnp.csv").exists() and (tmp_path / "pnp.png").stat().st_size > 0


def test_quick_reproduce_csgm_writes_the_curve(tmp_path):
    from mbdl_app.experiments.csgm import run_csgm

    result = run_csgm(tmp_path, quick=True)
    assert [r["m"] for r in result["curve"]] == [8, 16, 32]
    rows = (tmp_path / "csgm.csv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "m,method,mse,se" and len(rows) == 7 and (tmp_path / "csgm.png").stat().st_size > 0
