"""KalmanNet (seed Ex. 18): the update equation, the Klein et al. covariance, both contracts, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from engines.tracking.kalmannet import GainNet1, GainNet2, KalmanNet, small_inverse
from engines.tracking.ssm import LorenzSSM


class ConstantGain(nn.Module):
    """A gain network that always answers the same K (to check the filter equations)."""

    hidden_names = ("h",)

    def __init__(self, K: torch.Tensor) -> None:
        super().__init__()
        self.K = K

    def init_hidden(self, n_tracks):
        return (torch.zeros(n_tracks, 1),)

    def forward(self, f1, f2, f3, f4, h):
        return self.K.expand(f1.shape[0], -1, -1), h + 1


def test_architecture_2_has_about_25k_parameters_and_architecture_1_runs():
    net = KalmanNet(LorenzSSM())
    assert isinstance(net.gain, GainNet2)
    assert 20_000 < sum(p.numel() for p in net.parameters()) < 30_000
    net1 = KalmanNet(LorenzSSM(), arch="arch1", hidden_mult=2)
    assert isinstance(net1.gain, GainNet1) and net1.state_names[-1] == "h"
    mean, cov, *state = net1.step_tensors(torch.randn(4, 3), *net1.init_state(4))
    assert mean.shape == (4, 3) and cov.shape == (4, 3, 3) and len(state) == len(net1.state_names)


def test_update_is_f_of_x_plus_gain_times_innovation():
    ssm = LorenzSSM(obs="rotated", angle_deg=10.0)
    net = KalmanNet(ssm)
    K = 0.3 * torch.eye(3) + 0.05
    net.gain = ConstantGain(K)
    z0 = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 5.0, 20.0]])
    y = torch.tensor([[1.5, 2.5, 2.0], [-3.0, 4.0, 21.0]])
    mean, _, *state = net.step_tensors(y, *net.init_state(2, z0))
    prior = ssm.f(z0.double())
    expected = prior + (K.double() @ (y.double() - ssm.h(prior)).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(mean.double(), expected, rtol=1e-6, atol=1e-5)
    # next state: x_post, x_post_prev, x_prior_prev, y_prev, hidden
    torch.testing.assert_close(state[1], z0)
    torch.testing.assert_close(state[2].double(), prior, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(state[3], y)


def test_klein_covariance_recovers_the_kalman_posterior_for_the_optimal_gain():
    ssm = LorenzSSM(obs="rotated", angle_deg=30.0, r2=0.5)
    net = KalmanNet(ssm)
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 3, 3, generator=g)
    prior = A @ A.mT + 0.1 * torch.eye(3)
    H, R = ssm.H_rot.float(), ssm.R.float()
    K = prior @ H.T @ torch.linalg.inv(H @ prior @ H.T + R)  # K = Sigma H' S^-1
    expected = (torch.eye(3) - K @ H) @ prior
    torch.testing.assert_close(net.covariance(K), 0.5 * (expected + expected.mT), rtol=1e-4, atol=1e-4)


def test_spherical_observations_have_no_covariance():
    net = KalmanNet(LorenzSSM(obs="spherical"))
    assert not net.has_cov
    _, cov, *_ = net.step_tensors(torch.tensor([[5.0, 0.1, 0.2]]), *net.init_state(1))
    assert torch.count_nonzero(cov) == 0


def test_small_inverse_matches_linalg_inv():
    A = torch.eye(3) + 0.3 * torch.randn(5, 3, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(small_inverse(A), torch.linalg.inv(A), rtol=1e-4, atol=1e-5)


def test_trainer_step_and_runtime_step_agree_and_init_state_takes_a_chunk():
    net = KalmanNet(LorenzSSM())
    y = torch.randn(3, 5, 3) * 5
    state = net.init_state(y)  # the trainer passes the first chunk
    runtime = net.init_state(3)
    for t in range(5):
        state, x = net.step(state, y[:, t])
        mean, _, *runtime = net.step_tensors(y[:, t], *runtime)
        torch.testing.assert_close(x, mean)
    assert all(torch.equal(a, b) for a, b in zip(state, runtime, strict=True))


class OneStep(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, y, *state):
        return self.net.step_tensors(y, *state)


def test_one_step_graph_exports_to_onnx_and_onnxruntime_reproduces_100_steps(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = KalmanNet(LorenzSSM(), x0=(1.0, 1.0, 1.0)).eval()
    names = net.state_names
    state = net.init_state(2)
    path = tmp_path / "model.onnx"
    y0 = torch.randn(2, 3)
    torch.onnx.export(OneStep(net), (y0, *state), path, dynamo=False, opset_version=17,
                      input_names=["y", *names], output_names=["mean", "cov", *(f"next_{s}" for s in names)],
                      dynamic_axes={k: {0: "N"} for k in ["y", *names, "mean", "cov",
                                                           *(f"next_{s}" for s in names)]})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    y = np.random.default_rng(0).normal(size=(100, 3, 3)).astype(np.float32) * 3 + 5
    torch_state = net.init_state(3)
    ort_state = [s.numpy() for s in torch_state]
    with torch.no_grad():
        for t in range(100):
            mean, cov, *torch_state = net.step_tensors(torch.from_numpy(y[t]), *torch_state)
            out = sess.run(None, {"y": y[t], **dict(zip(names, ort_state, strict=True))})
            ort_state = out[2:]
            np.testing.assert_allclose(out[0], mean.numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(out[1], cov.numpy(), rtol=1e-3, atol=1e-4)
