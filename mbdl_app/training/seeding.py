"""Seeds and random-number-generator states: reproducible runs and exact resume.

RNG states are returned as tensors only, so a checkpoint holding them loads with
`torch.load(..., weights_only=True)` (no pickle) and, under data-parallel training,
can be gathered from every rank with plain collectives.
"""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import torch

_STAGE_KEY = 3  # derive_seed stream of stage data seeds (data.py uses 1 and 2)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python's `random`, NumPy's global generator and torch (CPU and every GPU).

    `deterministic=True` also makes torch pick deterministic kernels (cuDNN, cuBLAS;
    warn-only where none exists). On CPU, runs are bit-reproducible without it.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=True)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream (seed, *keys): independent streams per step, rank, purpose."""
    state = np.random.SeedSequence([seed % 2**63, *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def stage_seed(seed: int, stage: str) -> int:
    """The data seed of the stage named `stage` in a run seeded by `seed`.

    Generated batches and epoch shuffles are functions of (data seed, step), and every stage
    counts steps from 0: without the stage in the seed, each stage of a multi-stage run would
    see the very batches of the first one. Keyed by name, so a resumed stage draws the same.
    """
    return derive_seed(seed, _STAGE_KEY, zlib.crc32(stage.encode("utf-8")))


def rng_state(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """The states of Python's, NumPy's and torch's global generators, as CPU tensors.

    With a CUDA `device`, its generator's state is included under "cuda".
    """
    version, py_keys, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *py_keys], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
        "numpy": torch.tensor([*np_keys.tolist(), np_pos, np_has_gauss], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_gauss], dtype=torch.float64),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    """Restore the generators from `rng_state`'s output."""
    torch.set_rng_state(state["torch"].cpu())
    py = state["python"].tolist()
    gauss = float(state["python_gauss"][0])
    random.setstate((py[0], tuple(py[1:]), None if np.isnan(gauss) else gauss))
    keys = state["numpy"].tolist()
    np.random.set_state(("MT19937", np.array(keys[:-2], dtype=np.uint32), keys[-2], keys[-1],
                         float(state["numpy_gauss"][0])))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)
