"""ONNX export: the contract graphs, the card entries, fp16, the recipes' export step, exact ops."""

import json

import numpy as np
import onnx
import pytest
import torch

from engines.artifacts import CARD, read_artifact, sha256_of
from engines.export import ONNX_FILE, ONNX_FP16_FILE, OPSET, export_artifact, export_module
from engines.ops.shrinkage import soft_threshold, support_selection

from .conftest import TinyTracker, write_tiny_artifact


def in_place_support_selection(z, theta, q):
    """The selection as first written (an in-place scatter of a bool mask), which cannot be exported."""
    k = round(q * z.shape[-1])
    magnitude = z.abs()
    top = torch.zeros_like(magnitude, dtype=torch.bool)
    top.scatter_(-1, magnitude.topk(k, dim=-1).indices, True)
    return torch.where(top & (magnitude > theta), z, soft_threshold(z, theta))


@pytest.mark.parametrize("q", [0.012, 0.06, 0.13])
def test_exportable_support_selection_equals_the_in_place_one(q):
    z = torch.randn(64, 500, generator=torch.Generator().manual_seed(1))
    assert torch.equal(support_selection(z, 0.3, q), in_place_support_selection(z, 0.3, q))


def test_export_writes_model_onnx_and_records_it_in_the_card(tmp_path):
    folder = write_tiny_artifact(tmp_path / "tiny")
    entry = export_artifact(folder)
    card = json.loads((folder / CARD).read_text())
    assert (
        card["files"][ONNX_FILE] == sha256_of(folder / ONNX_FILE) == entry["sha256"] == card["onnx"]["sha256"]
    )
    assert entry["opset"] == OPSET >= 17 and entry["fp16"] is None and entry["n_params"] > 0
    assert entry["inputs"] == [{"name": "x", "shape": ["N", 20], "dtype": "float32"}]
    assert entry["outputs"] == [{"name": "y", "shape": ["N", 40], "dtype": "float32"}]
    model = onnx.load(str(folder / ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    read_artifact(folder)  # every listed file, model.onnx included, verifies


def test_fp16_export_adds_a_float16_graph_with_float32_io_and_a_plain_export_drops_it(tmp_path):
    folder = write_tiny_artifact(tmp_path / "tiny")
    entry = export_artifact(folder, fp16=True)
    assert entry["fp16"] == {"file": ONNX_FP16_FILE, "sha256": sha256_of(folder / ONNX_FP16_FILE)}
    model = onnx.load(str(folder / ONNX_FP16_FILE))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {t.data_type for t in model.graph.initializer} & {onnx.TensorProto.FLOAT16}
    export_artifact(folder)
    assert not (folder / ONNX_FP16_FILE).exists()
    assert ONNX_FP16_FILE not in json.loads((folder / CARD).read_text())["files"]


def test_a_tracker_exports_as_one_step_with_its_state_as_inputs_and_outputs(tmp_path):
    path = tmp_path / "tracker.onnx"
    export_module(TinyTracker(), {"input": {"shape": ["N", 2]}}, path, path)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["y", "x", "h"]
    assert [o.name for o in graph.output] == ["mean", "cov", "next_x", "next_h"]
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "N" for v in [*graph.input, *graph.output])
    assert not [n for n in graph.node if n.op_type in ("Loop", "If", "Scan")]  # no control flow in a step


def test_an_unexportable_card_is_an_artifact_error_naming_it(tmp_path):
    from engines.errors import ArtifactError

    folder = write_tiny_artifact(tmp_path / "tiny")
    card = json.loads((folder / CARD).read_text())
    card["input"]["shape"] = ["N", "m"]
    (folder / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"card\.json: input\.shape"):
        export_artifact(folder)


def test_every_recipe_exports_the_artifact_it_trains(tmp_path):
    from mbdl_app.training.recipes import get_recipe

    folder = get_recipe("alista-cs").run(tmp_path, quick=True, quiet=True)
    art = read_artifact(folder)
    assert art.card["files"][ONNX_FILE] == art.card["onnx"]["sha256"]
    from engines.load import load_artifact

    x = np.random.default_rng(0).normal(0, 0.3, (4, art.card["input"]["shape"][1])).astype(np.float32)
    y_torch, y_ort = load_artifact(folder, "torch")(x), load_artifact(folder, "onnxruntime")(x)
    assert np.linalg.norm(y_ort - y_torch) <= 1e-5 * np.linalg.norm(y_torch)


def test_a_recipe_whose_task_has_no_engine_writes_no_onnx(tmp_path):
    from mbdl_app.training.recipes import get_recipe

    folder = get_recipe("demo-linear").run(tmp_path, quick=True, quiet=True)
    assert not (folder / ONNX_FILE).exists()


class TinyWindowFilter(torch.nn.Module):
    """An imaging module shaped like CORONA: (N, T, 2, H, W) -> (N, T, 2, H, W), a 3x3 conv per frame."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        n, t = x.shape[:2]
        return self.conv(x.flatten(0, 1)).unflatten(0, (n, t)) - x.mean(dim=1, keepdim=True)


def test_an_imaging_engine_exports_its_newest_frame_with_free_height_and_width(tmp_path):
    from engines.base import EngineInfo
    from engines.runtime import onnxruntime_runtime as ort_rt

    module, path = TinyWindowFilter().eval(), tmp_path / "imaging.onnx"
    info = EngineInfo(
        "tiny-window", "unfolded", "clutter-suppression", "torch", 4, (4, 2, -1, -1), (1, 2, -1, -1)
    )
    export_module(module, {"input": {"shape": ["N", 4, 2, 8, 8]}}, path, path, info)
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 4, 2, "x_d3", "x_d4"]
    x = np.random.default_rng(0).normal(0, 1, (3, 4, 2, 12, 10)).astype(np.float32)  # not the card's 8 x 8
    (y,) = ort_rt.open_session(path).run(None, {"x": x})
    with torch.no_grad():
        expected = module(torch.as_tensor(x))[:, -1:].numpy()
    assert y.shape == (3, 1, 2, 12, 10)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-5)


class SizeBakingFilter(torch.nn.Module):
    """Weights each column by its position: tracing bakes the width W into the graph."""

    def forward(self, x):
        return x * torch.linspace(0.0, 1.0, int(x.shape[-1]))


def test_free_axes_that_the_trace_baked_in_are_fixed_at_the_card_size(tmp_path):
    from engines.base import EngineInfo

    path = tmp_path / "baked.onnx"
    info = EngineInfo("baked", "black-box", "clutter-suppression", "torch", 2, (2, 1, -1, -1), (2, 1, -1, -1))
    export_module(SizeBakingFilter(), {"input": {"shape": ["N", 2, 1, 8, 8]}}, path, path, info)
    dims = [
        d.dim_param or d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    ]
    assert dims == ["N", 2, 1, 8, 8]  # an engine on it refuses 16 x 16 instead of computing a wrong answer
