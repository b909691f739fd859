"""The black-box baseline of seed Fig. 6: a ResNet of 10 complex convolution layers.

Solomon et al. (IEEE TMI 2019) compare CORONA with a ResNet of 10 complex convolutional
layers (~25k parameters, ANCHORS.md "CORONA") trained on the same windows. Here the T
frames of a window are the network's complex input channels (so it can use time, as the
SVD filter and RPCA do), mapped to T output frames of S:

    layer 1        T -> C complex channels, 5 x 5
    layers 2-3     C -> C, 5 x 5      } residual blocks of two layers:
    layers 4-9     C -> C, 3 x 3      } x <- x + conv(CReLU(conv(x)))
    layer 10       C -> T, 3 x 3

with CReLU (ReLU on the real and imaginary parts) between layers, and a global skip:
S = D + net(D), so the network learns the clutter to remove (-L, nearly rank 3 in time and
so able to pass the C-channel bottleneck; S itself, full rank in time, cannot: without the
skip a 300-step training collapsed to S = 0). C = 8 and T = 20 give about 24.5k parameters.
A complex convolution is one real convolution with the block weight [[Wr, -Wi], [Wi, Wr]]
on channels [real parts, imaginary parts].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ComplexConv2d(nn.Module):
    """A complex 2-D convolution c_in -> c_out (k x k, "same" size) on real tensors
    (N, 2 c_in, H, W) = [real parts, imaginary parts] -> (N, 2 c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, k: int) -> None:
        super().__init__()
        scale = (2 * c_in * k * k) ** -0.5  # He-like: unit-variance outputs for unit-variance inputs
        self.weight = nn.Parameter(torch.randn(2, c_out, c_in, k, k) * scale)  # [Wr, Wi]
        self.bias = nn.Parameter(torch.zeros(2 * c_out))

    def forward(self, x: Tensor) -> Tensor:
        Wr, Wi = self.weight
        W = torch.cat([torch.cat([Wr, -Wi], dim=1), torch.cat([Wi, Wr], dim=1)], dim=0)
        return F.conv2d(x, W, self.bias, padding=W.shape[-1] // 2)


class ComplexResNet(nn.Module):
    """forward(D (N, T, 2, H, W)) -> S = D + net(D) (N, T, 2, H, W); see the module docstring."""

    def __init__(self, window: int = 20, channels: int = 8) -> None:
        super().__init__()
        self.window = int(window)
        C = channels
        sizes = [5, 5, 5, 3, 3, 3, 3, 3, 3, 3]
        dims = [(window, C)] + [(C, C)] * 8 + [(C, window)]
        self.layers = nn.ModuleList(ComplexConv2d(i, o, k) for (i, o), k in zip(dims, sizes, strict=True))

    def forward(self, D: Tensor) -> Tensor:
        N, T, _, H, W = D.shape
        x = D.transpose(1, 2).reshape(N, 2 * T, H, W)  # frames as complex channels
        x = self.layers[0](x)
        for k in range(1, 9, 2):
            x = x + self.layers[k + 1](F.relu(self.layers[k](F.relu(x))))
        y = self.layers[9](F.relu(x))
        return D + y.reshape(N, 2, T, H, W).transpose(1, 2)
