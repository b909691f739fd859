"""Deep-STORM (Nehme et al., Optica 2018): the black-box baseline of seed Fig. 8, one frame at a time.

A single-molecule frame (camera pixels, ADU) is upsampled x8 (nearest neighbour) and an
encoder-decoder CNN maps it to an image on the 8x finer grid whose peaks are the emitters
(ANCHORS.md "Microscopy super-resolution"): one 3 x 3 convolution + batch norm + ReLU per
level, three 2 x 2 max-pools down and three x2 upsamplings back, then a 1 x 1 convolution:

    x8 -> c1 | pool -> c2 | pool -> c3 | pool -> c4 | up -> c3 | up -> c2 | up -> c1 | 1x1 -> s

The paper's widths are (c1, c2, c3, c4) = (32, 64, 128, 512). Here they are halved,
(16, 32, 64, 256), for the CPU (measured on one core of the dev machine, torch 2.13): a
training step on 16 patches of 128 x 128 fine pixels takes 2.06 s at the paper's widths and
0.66 s at half, and one 64 x 64 frame (512 x 512 fine) 597 ms vs 142 ms, so the 40-minute
training budget sees ~3x more patches and a live session runs ~4x more frames. The shape of
the network (levels, pools, upsamplings, the 8x input) is the paper's. The shipped artifact on one
thread, `mbdl bench engines --name deep-storm` at load ~5 on the 2 cores: ONNX Runtime 97 ms per
64 x 64 frame (p50), torch 253 ms (ratio 0.38).

Input normalization is inside the module, per frame, so one network serves any camera gain
and offset: (x - median(x)) / (1.4826 MAD(x)), the frame's background level subtracted and
divided by a robust estimate of its noise (emitters, a minority of the pixels, move neither
much). Both statistics are order statistics (a sort), which exports to ONNX at any frame size.

Output `s` >= 0 is an emitter density: an isolated emitter contributes a mass of about 1, so
the sum over a frame counts its emitters and summing frames draws the super-resolved image
(the session's map). In training (`module.train()`) the output is the linear layer's, so that
no gradient dies at the clamp; the loss (`deep_storm_loss`) is the paper's: MSE between the
prediction and the truth spikes, both blurred by a 7 x 7 Gaussian of sigma 1 fine pixel, plus
the L1 norm of the prediction, on spikes of height SPIKE_SCALE = 100 (the paper's scaling).

Fine pixel (i, j) covers x in [j p / 8, (j + 1) p / 8) nm (x = column, from the frame's left
edge; p the camera pixel size), the convention of drivers/sim/smlm.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from engines.base import EngineInfo, check_finite
from engines.errors import BackendUnavailable, EngineInputError
from engines.imaging.smlm_metrics import localize_image
from engines.runtime.chunking import run_in_chunks

FACTOR = 8  # the fine grid is 8x finer in each direction
CHANNELS = (16, 32, 64, 256)  # the paper's (32, 64, 128, 512) halved (module docstring)
MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian = 1.4826 x its median absolute deviation
MIN_SCALE = 1e-3  # a constant frame (MAD 0) is divided by this instead of 0
SPIKE_SCALE = 100.0  # the truth spikes' height in the loss (Nehme et al.)
LOSS_KERNEL, LOSS_SIGMA = 7, 1.0  # the loss's blur: 7 x 7 Gaussian, sigma 1 fine pixel


def robust_normalize(frames: Tensor) -> Tensor:
    """(N, H, W) -> (frames - median) / (1.4826 MAD), statistics per frame (module docstring)."""
    v = frames.flatten(1)
    k = v.shape[1] // 2
    median = v.sort(dim=1).values[:, k:k + 1]
    mad = (v - median).abs().sort(dim=1).values[:, k:k + 1]
    scale = (MAD_TO_SIGMA * mad).clamp_min(MIN_SCALE)
    return (frames - median[:, :, None]) / scale[:, :, None]


def _level(c_in: int, c_out: int) -> nn.Sequential:
    """One level of the encoder or decoder: 3 x 3 convolution, batch norm, ReLU (Nehme et al.)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class DeepStorm(nn.Module):
    """forward(x (N, 1, 1, H, W) ADU) -> s (N, 1, 1, 8H, 8W) emitter density (module docstring).

    Any H x W: the x8 upsampling makes the fine grid divisible by the three pools' 8. Eval mode
    clamps s at 0; training mode returns the linear output.
    """

    def __init__(self, channels: Sequence[int] = CHANNELS, factor: int = FACTOR) -> None:
        super().__init__()
        c1, c2, c3, c4 = (int(c) for c in channels)
        self.factor = int(factor)
        self.encoder = nn.ModuleList([_level(1, c1), _level(c1, c2), _level(c2, c3), _level(c3, c4)])
        self.decoder = nn.ModuleList([_level(c4, c3), _level(c3, c2), _level(c2, c1)])
        self.head = nn.Conv2d(c1, 1, 1, bias=False)

    def density(self, frames: Tensor) -> Tensor:
        """(N, H, W) ADU frames -> the linear output (N, 8H, 8W)."""
        z = F.interpolate(robust_normalize(frames)[:, None], scale_factor=self.factor, mode="nearest")
        z = self.encoder[0](z)
        for level in self.encoder[1:]:
            z = level(F.max_pool2d(z, 2))
        for level in self.decoder:
            z = level(F.interpolate(z, scale_factor=2, mode="nearest"))
        return self.head(z)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        s = self.density(x[:, -1, 0])
        return (s if self.training else torch.relu(s))[:, None, None]


def blur_kernel(size: int = LOSS_KERNEL, sigma: float = LOSS_SIGMA) -> Tensor:
    """The loss's (1, 1, size, size) Gaussian of `sigma` fine pixels, normalized to sum 1."""
    a = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-0.5 * (a / sigma) ** 2)
    k = g[:, None] * g[None, :]
    return (k / k.sum())[None, None]


_KERNEL = blur_kernel()


def deep_storm_loss(s: Tensor, spikes: Tensor) -> Tensor:
    """MSE(G * 100 s, G * 100 y) + mean |100 s|: the paper's loss (module docstring).

    s (N, 1, 1, fH, fW) the network's linear output, spikes (N, fH, fW) the number of true
    emitters in each fine pixel (any dtype).
    """
    s = SPIKE_SCALE * s[:, 0]
    y = SPIKE_SCALE * spikes[:, None].to(s.dtype)
    pad = _KERNEL.shape[-1] // 2
    mse = F.mse_loss(F.conv2d(s, _KERNEL, padding=pad), F.conv2d(y, _KERNEL, padding=pad))
    return mse + s.abs().mean()


def localize_density(s: np.ndarray, fine_nm: float, threshold: float, radius: int = 2) -> np.ndarray:
    """(K, 2) nm [x, y]: the emitters of one density image s (fH, fW) of `fine_nm` nm pixels.

    s smoothed by the loss's Gaussian (so a spread emitter is one peak), then its local maxima
    over (2 radius + 1)^2 fine pixels above `threshold`, each at its 3 x 3 centroid
    (engines.imaging.smlm_metrics.localize_image). The deep-storm card holds the threshold and
    radius chosen on validation frames (metrics.threshold, metrics.radius).
    """
    smoothed = ndimage.correlate(np.asarray(s, np.float64), _KERNEL[0, 0].double().numpy(), mode="constant")
    return localize_image(smoothed, fine_nm, threshold, radius)


class DeepStormEngine:
    """Engine: (N, 1, 1, H, W) float32 ADU frames -> (N, 1, 1, 8H, 8W) emitter density >= 0.

    Window 1 (each frame on its own), any H x W, torch in float32 without gradients; task
    "super-resolution" (the session sums the outputs into the super-resolved map).
    """

    def __init__(self, name: str, module: DeepStorm) -> None:
        self.module = module.eval().float()
        self.info = EngineInfo(
            name=name, family="black-box", task="super-resolution", backend="torch", window=1,
            in_shape=(1, 1, -1, -1), out_shape=(1, 1, -1, -1),
            n_params=sum(p.numel() for p in module.parameters() if p.requires_grad))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 5 or x.shape[1:3] != (1, 1):
            raise EngineInputError(f"{self.info.name}: expected frames (N, 1, 1, H, W), got shape {x.shape}")
        check_finite(self.info.name, x)
        return run_in_chunks(self._locate, np.ascontiguousarray(x, dtype=np.float32))  # bounded memory

    def _locate(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(x)).numpy()


def engine_from_artifact(art, *, backend: str = "auto") -> DeepStormEngine:
    """The DeepStormEngine of a verified Deep-STORM artifact (engines.artifacts.Artifact): the card's
    `architecture.kwargs` rebuild DeepStorm, the state dict loads strictly (ArtifactError otherwise)."""
    if backend not in ("auto", "torch"):
        raise BackendUnavailable(f"{art.card.get('name')}: this loader runs torch only, not {backend!r}")
    spec = art.card.get("architecture") or {}
    module = art.build_module(lambda: DeepStorm(**spec.get("kwargs", {})), "DeepStorm")
    engine = DeepStormEngine(art.card.get("name", art.path.name), module)
    engine.card = art.card
    return engine
