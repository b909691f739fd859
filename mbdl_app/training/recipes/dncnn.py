"""Recipe `dncnn`: the plug-and-play denoiser of seed Example 20 (engines/imaging/dncnn.py).

Data: the grayscale images shipped inside scikit-image (`skimage.data`, read from the installed
package, never downloaded), intensities on [0, 1] (color images through skimage.color.rgb2gray).
TRAIN_IMAGES give the training patches, VAL_IMAGE the validation patches, and HELD_OUT
('camera', the cameraman) is never seen in training or validation: the card's test figures and
`mbdl reproduce pnp` use it.

Training pairs are generated on the fly: a PATCH x PATCH patch from a random training image at a
random place, flipped / rotated by a random multiple of 90 degrees, and Gaussian noise of a
standard deviation alpha drawn per patch uniformly from [0, SIGMA_MAX] = [0, 50/255]; input
[patch + noise, alpha map], target the clean patch, loss MSE. Adam at 1e-3 with a cosine decay to
1 %, gradient clipping at norm 1, one thread.

Held-out figures (card `metrics`): PSNR of the denoiser alone on the full held-out image at
sigma = 15, 25, 50 / 255 (noise seeded), beside the noisy input's PSNR.

Budget: FULL = 1,600 steps of 24 patches of 32 x 32 on one thread (width 24: the budget of one core
shared by ~8 jobs). Shipped run (2026-12-06, load 15-19 on the 2 cores): 1,073 s of training wall;
held-out camera at sigma 15 / 25 / 50: 30.94 / 29.16 / 26.63 dB (noisy 24.59 / 20.19 / 14.14).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engines.imaging.dncnn import ARCH, DnCNN
from mbdl_app.training.recipes import Plan, Recipe
from mbdl_app.training.schedules import Cosine
from mbdl_app.training.shipped_data import skimage_gray
from mbdl_app.training.trainer import TrainConfig, Trainer

TRAIN_IMAGES = ("astronaut", "brick", "chelsea", "clock", "coffee", "grass", "gravel", "hubble_deep_field",
                "immunohistochemistry", "moon", "page", "rocket", "text", "retina", "cell")
VAL_IMAGE = "coins"
HELD_OUT = "camera"
SIGMA_MAX = 50 / 255
TEST_SIGMAS = (15, 25, 50)  # on the 0..255 scale
TEST_SEED = 2026


def psnr(estimate: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of an estimate of an image on [0, 1] (peak 1)."""
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(truth, np.float64)) ** 2))
    return float(10 * np.log10(1.0 / max(mse, 1e-20)))


def noisy(image: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """image + N(0, sigma^2) noise, seeded (float32, not clipped)."""
    rng = np.random.default_rng(seed)
    return (image + sigma * rng.standard_normal(image.shape)).astype(np.float32)


def denoise_image(model: DnCNN, z: np.ndarray, sigma: float) -> np.ndarray:
    """The model's h(z; sigma) on one (H, W) image."""
    model.eval()
    with torch.no_grad():
        return model.denoise(torch.from_numpy(z)[None, None], sigma)[0, 0].numpy()


@dataclass(frozen=True)
class Size:
    patch: int
    batch: int
    steps: int
    val_patches: int
    crop: int | None  # held-out evaluation on a central crop (quick) or the whole image


FULL = Size(patch=32, batch=24, steps=1600, val_patches=256, crop=None)
QUICK = Size(patch=16, batch=4, steps=3, val_patches=8, crop=64)


def _augment(p: torch.Tensor, k: int) -> torch.Tensor:
    p = torch.rot90(p, k % 4, dims=(-2, -1))
    return p.flip(-1) if k >= 4 else p


def patch_sampler(images: list[torch.Tensor], size: Size):
    """fn(step, generator) -> ((N, 1, 2, P, P) [noisy, alpha], (N, 1, 1, P, P) clean): fresh patches and
    noise each call (module docstring)."""
    P = size.patch

    def sample(step: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        clean = []
        for _ in range(size.batch):
            im = images[int(torch.randint(len(images), (1,), generator=g))]
            r = int(torch.randint(im.shape[0] - P + 1, (1,), generator=g))
            c = int(torch.randint(im.shape[1] - P + 1, (1,), generator=g))
            clean.append(_augment(im[r:r + P, c:c + P], int(torch.randint(8, (1,), generator=g))))
        y = torch.stack(clean)[:, None]  # (N, 1, P, P)
        alpha = SIGMA_MAX * torch.rand(size.batch, 1, 1, 1, generator=g)
        z = y + alpha * torch.randn(y.shape, generator=g)
        return torch.cat([z, alpha.expand_as(z)], dim=1)[:, None], y[:, None]

    return sample


def _mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, target)


class DnCNNRecipe(Recipe):
    """dncnn (see the module docstring)."""

    name = "dncnn"
    description = ("DnCNN-style residual denoiser with a noise-level input (depth 8, width 24, no batch "
                   "norm): the learned prox of plug-and-play ADMM / HQS (seed Example 20)")
    seed = 0

    def build(self, quick: bool) -> Plan:
        torch.set_num_threads(1)  # a shared machine: one core per training run
        size = QUICK if quick else FULL
        names = TRAIN_IMAGES[:2] if quick else TRAIN_IMAGES
        images = [torch.from_numpy(skimage_gray(n)) for n in names]
        val = GeneratedVal(size).make(torch.from_numpy(skimage_gray(VAL_IMAGE)))
        held_out = skimage_gray(HELD_OUT)
        if size.crop:
            h, w = held_out.shape
            r, c = (h - size.crop) // 2, (w - size.crop) // 2
            held_out = held_out[r:r + size.crop, c:c + size.crop]
        model = DnCNN(**ARCH)

        def evaluate(trainer: Trainer) -> dict[str, Any]:
            out: dict[str, Any] = {"validation_mse": round(float(trainer.evaluate(val)), 8),
                                   "held_out_image": f"skimage.data.{HELD_OUT}() {held_out.shape[0]} x "
                                                     f"{held_out.shape[1]}, noise seed {TEST_SEED}"}
            for s in TEST_SIGMAS:
                z = noisy(held_out, s / 255, TEST_SEED + s)
                out[f"sigma_{s}"] = {"noisy_psnr_db": round(psnr(z, held_out), 3),
                                     "denoised_psnr_db": round(psnr(denoise_image(trainer.model, z, s / 255),
                                                                    held_out), 3)}
            return out

        card = {
            "task": "denoising",
            "family": "black-box",
            "description": self.description,
            "architecture": {"name": "dncnn", "kwargs": ARCH},
            "input": {"shape": ["N", 1, 2, 64, 64], "window": 1, "dtype": "float32",
                      "normalization": "intensities on [0, 1]; channel 1 the noise standard deviation in the "
                                       "same units, constant over the image",
                      "meaning": "[noisy image, noise-level map]; any H, W"},
            "output": {"shape": ["N", 1, 1, 64, 64], "dtype": "float32", "meaning": "the denoised image"},
            "training": {
                "data": (f"skimage.data images {list(names)} (grayscale, [0, 1]); {size.patch} x "
                         f"{size.patch} patches drawn at random with a random flip / rotation, Gaussian "
                         f"noise of std U[0, 50/255] per patch, fresh every step; validation: "
                         f"{size.val_patches} patches of skimage.data.{VAL_IMAGE}; held out: "
                         f"skimage.data.{HELD_OUT} (never trained on)"),
                "loss": "MSE(h(z; alpha), clean)",
                "validation_metric": "the loss",
                "budget": f"{size.steps} steps of batch {size.batch} on one CPU thread",
            },
        }
        return Plan(model=model, loss_fn=_mse, train_data=patch_sampler(images, size), val_data=val,
                    config=TrainConfig(lr=1e-3, max_steps=size.steps, batch_size=size.batch,
                                       schedule=Cosine(final=0.01), grad_clip=1.0,
                                       eval_every=max(1, size.steps // 4), device="cpu"),
                    evaluate=evaluate, card=card)


@dataclass(frozen=True)
class GeneratedVal:
    """A fixed validation set: `val_patches` seeded patches of one image with seeded noise levels."""

    size: Size

    def make(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(TEST_SEED)
        sample = patch_sampler([image], Size(self.size.patch, self.size.val_patches, 1, 0, None))
        return sample(0, g)


RECIPES = (DnCNNRecipe(),)
RECIPE = RECIPES[0]
