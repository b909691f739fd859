"""The RNN baselines: black-box GRU tracker and the model-based RNN (increment over f(x))."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engines.tracking.rnn import GRUTracker, ModelBasedRNN
from engines.tracking.ssm import LorenzSSM


def test_model_based_rnn_with_zero_increment_is_the_models_open_loop_prediction():
    ssm = LorenzSSM()
    net = ModelBasedRNN(ssm, hidden=8)
    nn.init.zeros_(net.increment.weight)
    nn.init.zeros_(net.increment.bias)
    z0 = torch.tensor([[1.0, 2.0, 3.0]])
    state = net.init_state(1, z0)
    x = z0.double()
    for _ in range(5):
        mean, cov, *state = net.step_tensors(torch.randn(1, 3), *state)
        x = ssm.f(x)
        torch.testing.assert_close(mean.double(), x, rtol=1e-5, atol=1e-4)
        assert torch.count_nonzero(cov) == 0


def test_gru_tracker_starts_from_the_prior_it_is_given_and_follows_both_contracts():
    net = GRUTracker(LorenzSSM(), hidden=8)
    assert not net.has_cov and net.state_names == ("h",)
    a, b = net.init_state(2, torch.tensor([[1.0, 1, 1], [10, -5, 30]]))[0]
    assert not torch.equal(a, b)
    y = torch.randn(2, 4, 3)
    state = net.init_state(y)  # the trainer passes the first chunk
    runtime = net.init_state(2)
    for t in range(4):
        state, x = net.step(state, y[:, t])
        mean, _, *runtime = net.step_tensors(y[:, t], *runtime)
        torch.testing.assert_close(x, mean)


class OneStep(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, y, *state):
        return self.net.step_tensors(y, *state)


@pytest.mark.parametrize("cls", [GRUTracker, ModelBasedRNN])
def test_one_step_graph_exports_and_onnxruntime_reproduces_step_tensors_on_100_steps(cls, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = cls(LorenzSSM(), hidden=8).eval()
    names = net.state_names
    outs = ["mean", "cov", *(f"next_{s}" for s in names)]
    path = tmp_path / "model.onnx"
    torch.onnx.export(OneStep(net), (torch.randn(2, 3), *net.init_state(2)), path, dynamo=False,
                      opset_version=17, input_names=["y", *names], output_names=outs,
                      dynamic_axes={k: {0: "N"} for k in ["y", *names, *outs]})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = (np.random.default_rng(0).normal(size=(100, 3, 3)) * 3 + 5).astype(np.float32)
    with torch.no_grad():
        state = net.init_state(3)
        for t in range(100):  # the same state into both: chaos would amplify rounding over 100 free steps
            feed = {"y": y[t], **{k: v.numpy() for k, v in zip(names, state, strict=True)}}
            out = sess.run(None, feed)
            expected = net.step_tensors(torch.from_numpy(y[t]), *state)
            for got, want in zip(out, expected, strict=True):
                np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
            state = expected[2:]
