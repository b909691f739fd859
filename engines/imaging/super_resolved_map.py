"""The super-resolved map of localization microscopy / ULM: the sum of per-frame localization images.

numpy only, so the live session's map sink (mbdl_app/session/maps.py) runs in the torch-free
runtime install (issue 18); engines.imaging.ulm re-exports it beside the ULM engines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Accumulator:
    """The super-resolved map: the sum of per-frame localization images (f h, f w), and the count.

    Not thread-safe: one owner (the session's map sink or an experiment) adds and reads.
    """

    shape: tuple[int, int]

    def __post_init__(self) -> None:
        self.map = np.zeros(self.shape, np.float32)
        self.frames = 0
        self.localizations = 0

    def add(self, localizations: np.ndarray) -> None:
        """Add one frame's localization image (H, W) (or a stack (..., H, W), summed)."""
        loc = np.asarray(localizations, dtype=np.float32).reshape(-1, *self.shape)
        self.map += loc.sum(0)
        self.frames += loc.shape[0]
        self.localizations += int(np.count_nonzero(loc))

    def reset(self) -> None:
        self.map.fill(0)
        self.frames = self.localizations = 0
