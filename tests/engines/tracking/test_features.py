"""Seed Ex. 19: blob frames of the Lorenz state, the CNN encoder, KalmanNet on its features."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from engines.load import load_artifact
from engines.tracking.features import SIZE, FeatureTracker, FrameEncoder, render
from engines.tracking.kalmannet import KalmanNet
from engines.tracking.ssm import LorenzSSM
from mbdl_app.training.recipes import get_recipe


def peak(frame: torch.Tensor) -> tuple[int, int]:
    i = int(torch.argmax(frame))
    return divmod(i, frame.shape[-1])


def test_blob_sits_at_x1_x3_and_its_width_grows_with_x2():
    frames = render(torch.tensor([[0.0, 0.0, 27.5], [-25.0, 0.0, 0.0], [25.0, 0.0, 55.0]]))
    assert frames.shape == (3, SIZE, SIZE)
    assert peak(frames[1]) == (0, 0) and peak(frames[2]) == (SIZE - 1, SIZE - 1)
    assert peak(frames[0]) in {(13, 13), (13, 14), (14, 13), (14, 14)}
    narrow, wide = render(torch.tensor([[0.0, -30.0, 27.5], [0.0, 30.0, 27.5]]))
    assert wide.sum() > 4 * narrow.sum()  # s: 1 px -> 3 px, mass ~ s^2


def test_feature_tracker_is_encoder_then_kalmannet():
    enc, kn = FrameEncoder(), KalmanNet(LorenzSSM())
    net = FeatureTracker(enc, kn)
    frames = render(torch.tensor([[1.0, 2.0, 20.0]])).flatten(-2)
    with torch.no_grad():
        mean, cov, *_ = net.step_tensors(frames, *net.init_state(1))
        expected, _, *_ = kn.step_tensors(enc(frames), *kn.init_state(1))
    torch.testing.assert_close(mean, expected)
    assert net.m == SIZE * SIZE and net.has_cov and cov.shape == (1, 3, 3)


def test_quick_frames_recipe_trains_encoder_then_kalmannet_and_loads_as_engine(tmp_path):
    folder = get_recipe("kalmannet-lorenz-frames").run(tmp_path, quick=True, quiet=True)
    card = json.loads((folder / "card.json").read_text())
    assert [s["name"] for s in card["training"]["stages"]] == ["encoder", "chunks", "full"]
    m = card["metrics"]
    assert card["model"]["r2"] == m["feature_r2"] > 0
    assert np.isfinite([m["test_mse_db"], m["features_mse_db"], m["ekf_on_features"]["mse_db"]]).all()
    engine = load_artifact(folder, backend="torch")
    assert engine.info.in_shape == (SIZE * SIZE,)
    engine.reset(1)
    est = engine.step(render(torch.tensor([[1.0, 1.0, 1.0]])).flatten(-2).double().numpy())
    assert est.mean.shape == (1, 3) and est.cov.shape == (1, 3, 3)


def test_feature_tracker_exports_one_step_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    net = FeatureTracker(FrameEncoder(), KalmanNet(LorenzSSM())).eval()

    class OneStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, y, *state):
            return self.net.step_tensors(y, *state)

    names = net.state_names
    outs = ["mean", "cov", *(f"next_{s}" for s in names)]
    y = render(torch.tensor([[1.0, 2.0, 20.0], [5.0, -3.0, 30.0]])).flatten(-2)
    with torch.no_grad():
        state = net.init_state(2)
        torch.onnx.export(OneStep(), (y, *state), tmp_path / "m.onnx", dynamo=False, opset_version=17,
                          input_names=["y", *names], output_names=outs,
                          dynamic_axes={k: {0: "N"} for k in ["y", *names, *outs]})
        expected = net.step_tensors(y, *state)
    out = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"y": y.numpy(), **{k: v.numpy() for k, v in zip(names, state, strict=True)}})
    np.testing.assert_allclose(out[0], expected[0].numpy(), rtol=1e-4, atol=1e-4)
