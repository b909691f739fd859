"""Data sets shipped inside installed packages (read from disk, never downloaded at run time).

- `skimage_gray(name)`: the images of scikit-image's `skimage.data` (the natural images of the
  `dncnn` recipe and of `mbdl reproduce pnp`);
- `digits_split()`: scikit-learn's 8 x 8 handwritten digits, split once into train / val / test (the
  `vae-digits` recipe and `mbdl reproduce csgm`).

Both packages are in the `priors` extra (pip install 'mbdl-studio[priors]').
"""

from __future__ import annotations

import numpy as np

SPLIT_SEED = 0
N_TEST, N_VAL = 300, 200  # digits held out from training: test and validation


def skimage_gray(name: str) -> np.ndarray:
    """scikit-image's shipped image `name` as float32 (H, W) on [0, 1] (color -> luminance)."""
    try:
        from skimage import color, data
    except ImportError:
        raise ImportError("the natural images come from scikit-image: "
                          "pip install 'mbdl-studio[priors]'") from None
    loader = getattr(data, name, None)
    if loader is None:
        raise ValueError(f"skimage.data has no image {name!r}")
    im = np.asarray(loader())
    if im.ndim == 3:
        im = color.rgb2gray(im[..., :3])
    elif im.dtype == np.uint8:
        im = im / 255.0
    return np.clip(im, 0, 1).astype(np.float32)


def digits_split() -> dict[str, np.ndarray]:
    """scikit-learn's digits as float32 (N, 64) on [0, 1] (pixels / 16), split {"train", "val", "test"} by
    a permutation seeded SPLIT_SEED: N_TEST test, N_VAL validation, the rest (1,297) training."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the digits come from scikit-learn: pip install 'mbdl-studio[priors]'") from None
    s = (load_digits().data / 16.0).astype(np.float32)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(s))
    return {"test": s[order[:N_TEST]], "val": s[order[N_TEST:N_TEST + N_VAL]],
            "train": s[order[N_TEST + N_VAL:]]}
