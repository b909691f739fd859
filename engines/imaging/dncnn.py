"""A small DnCNN-style denoiser with a noise-level input: the prior step of plug-and-play (seed Ex. 20).

h_theta(z; alpha) in seed eq. (26): a residual CNN (Zhang et al., "Beyond a Gaussian denoiser",
TIP 2017) that takes the noisy image z and a noise-level map alpha (the standard deviation of
the noise, constant over the image, FFDNet's way of conditioning one network on many levels)
and returns the denoised image z - r_theta([z, alpha]):

    [z, alpha] -> conv 3x3 (2 -> w) ReLU -> (depth - 2) x [conv 3x3 (w -> w) ReLU] -> conv 3x3 (w -> 1) = r
    h(z; alpha) = z - r

No batch norm (the paper's DnCNN has it; without it the network is the same in train and eval
mode and one ONNX graph serves every noise level). At depth 8 and width 24: 31,921 weights (width 24,
not DnCNN's 64: the training budget is minutes of one shared CPU core).

Images are on a [0, 1] intensity scale and alpha is in the same units (25/255 for the usual
sigma = 25 on 8-bit images). The recipe (`mbdl train dncnn`) trains it on patches of the
images shipped with scikit-image with alpha drawn per patch from [0, 50/255].

The artifact's module (`DnCNN.forward`) takes the engine layout (N, 1, 2, H, W): channel 0 the
noisy image, channel 1 the noise-level map, and returns (N, 1, 1, H, W); so its ONNX graph has
the single input "x" and any H, W. `denoise(z, alpha)` is the call the PnP solvers make.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from engines.base import EngineInfo, check_finite
from engines.errors import BackendUnavailable, EngineInputError

DEPTH, WIDTH = 8, 24
ARCH = {"depth": DEPTH, "width": WIDTH}


class DnCNN(nn.Module):
    """h(z; alpha) = z - r([z, alpha]) (module docstring); forward on (N, 1, 2, H, W) -> (N, 1, 1, H, W)."""

    def __init__(self, depth: int = DEPTH, width: int = WIDTH) -> None:
        super().__init__()
        if depth < 2 or width < 1:
            raise ValueError(f"DnCNN needs depth >= 2 and width >= 1, got depth={depth}, width={width}")
        layers: list[nn.Module] = [nn.Conv2d(2, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.residual = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        z = x[:, -1]  # (N, 2, H, W): the newest (only) frame of the window
        return (z[:, :1] - self.residual(z))[:, None]

    def denoise(self, z: Tensor, alpha: Tensor | float) -> Tensor:
        """h(z; alpha): z (N, 1, H, W) on [0, 1], alpha the noise standard deviation (scalar or (N,))."""
        level = torch.as_tensor(alpha, dtype=z.dtype, device=z.device).reshape(-1, 1, 1, 1)
        x = torch.cat([z, level.expand_as(z)], dim=1)[:, None]
        return self(x)[:, 0]


class DenoiserEngine:
    """Engine: (N, 1, 2, H, W) float32 [noisy image, noise-level map] -> (N, 1, 1, H, W) denoised.

    Window 1, any H x W, torch in float32 without gradients; task "denoising". The PnP engines
    (engines/imaging/pnp.py) call `module.denoise` inside their iterations.
    """

    def __init__(self, name: str, module: DnCNN) -> None:
        self.module = module.eval().float()
        self.info = EngineInfo(
            name=name, family="black-box", task="denoising", backend="torch", window=1,
            in_shape=(1, 2, -1, -1), out_shape=(1, 1, -1, -1),
            n_params=sum(p.numel() for p in module.parameters() if p.requires_grad))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 5 or x.shape[1:3] != (1, 2):
            raise EngineInputError(f"{self.info.name}: expected (N, 1, 2, H, W) [image, noise level], "
                                   f"got shape {x.shape}")
        check_finite(self.info.name, x)
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def engine_from_artifact(art, *, backend: str = "auto") -> DenoiserEngine:
    """The DenoiserEngine of a verified DnCNN artifact: the card's `architecture.kwargs` rebuild
    DnCNN, the state dict loads strictly (ArtifactError otherwise)."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: this loader runs torch only, not {backend!r}")
    spec = art.card.get("architecture") or {}
    module = art.build_module(lambda: DnCNN(**spec.get("kwargs", {})), "DnCNN")
    engine = DenoiserEngine(art.card.get("name", art.path.name), module)
    engine.card = art.card
    return engine
