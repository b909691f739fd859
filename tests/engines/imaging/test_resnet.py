"""The black-box ResNet baseline: size, complex arithmetic, ONNX Runtime parity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import torch

from engines.imaging.resnet import ComplexConv2d, ComplexResNet


def test_about_25k_parameters_as_in_the_anchors():
    n = sum(p.numel() for p in ComplexResNet(window=20, channels=8).parameters())
    assert 20_000 < n < 30_000


def test_complex_conv_is_a_complex_multiplication_for_1x1_kernels():
    conv = ComplexConv2d(1, 1, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([2.0, 3.0]).reshape(2, 1, 1, 1, 1))
    y = conv(torch.tensor([1.0, -4.0]).reshape(1, 2, 1, 1)).flatten()
    z = complex(2, 3) * complex(1, -4)
    assert y.tolist() == [z.real, z.imag]


def test_windows_in_windows_out_and_onnx_parity(tmp_path):
    net = ComplexResNet(window=20).eval()
    D = torch.randn(2, 20, 2, 16, 12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(D).numpy()
    assert expected.shape == D.shape
    path = tmp_path / "resnet.onnx"
    torch.onnx.export(net, (D[:1],), str(path), dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["y"], {"x": D.numpy()})[0]
    assert np.abs(y - expected).max() <= 1e-4 * np.abs(expected).max()
