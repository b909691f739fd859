"""Training data: a fixed dataset reshuffled every epoch, or batches generated on the fly.

A batch is a pair `(inputs, target)`, each a tensor or a tuple of tensors, batch-first.
Both kinds are pure functions of (seed, step, rank): batch k of a run is the same whether
or not the run was interrupted and resumed, and under data-parallel training every rank
derives its own share without communicating. That is what makes resume exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from mbdl_app.training.errors import TrainingError
from mbdl_app.training.seeding import derive_seed

Batch = tuple[Any, Any]
_SHUFFLE, _GENERATE = 1, 2  # stream ids for derive_seed


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], obj: Any) -> Any:
    """Apply `fn` to every tensor in nested tuples/lists/dicts; other leaves are kept."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, o) for o in obj)
    if isinstance(obj, dict):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


def tensors_of(obj: Any) -> list[torch.Tensor]:
    """The tensors in nested tuples/lists/dicts, in order."""
    out: list[torch.Tensor] = []
    map_tensors(lambda t: out.append(t) or t, obj)
    return out


def concat(parts: list[Any]) -> Any:
    """Concatenate along dim 0 a list of batches of the same structure (tensor or tuple)."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    return type(first)(concat([p[i] for p in parts]) for i in range(len(first)))


class TensorData:
    """A fixed dataset `(inputs, target)` indexed along dim 0.

    Each epoch is a permutation drawn from a generator seeded by (seed, epoch); the last
    incomplete batch of an epoch is dropped so that every batch, and every rank's share
    of it, has the same size. Under data parallelism the global batch of `batch_size`
    is split into `world_size` equal consecutive shares.
    """

    def __init__(self, inputs: Any, target: Any):
        sizes = {t.shape[0] for t in tensors_of((inputs, target))}
        if len(sizes) != 1:
            raise TrainingError(f"dataset tensors disagree on the number of samples: {sorted(sizes)}")
        self.inputs, self.target = inputs, target
        self.n = sizes.pop()
        self._perm: tuple[int, torch.Tensor] | None = None

    def steps_per_epoch(self, batch_size: int) -> int:
        if self.n < batch_size:
            raise TrainingError(f"dataset of {self.n} samples is smaller than one batch ({batch_size})")
        return self.n // batch_size

    def _permutation(self, epoch: int, seed: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(derive_seed(seed, _SHUFFLE, epoch))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Batch:
        """This rank's share of global batch `step` (0-based, counted across epochs)."""
        epoch, k = divmod(step, self.steps_per_epoch(batch_size))
        share = batch_size // world_size
        start = k * batch_size + rank * share
        idx = self._permutation(epoch, seed)[start:start + share]
        return map_tensors(lambda t: t[idx], (self.inputs, self.target))

    def in_order(self, size: int) -> Iterator[Batch]:
        """The whole set, unshuffled, in batches of at most `size` (for evaluation)."""
        for start in range(0, self.n, size):
            part = slice(start, start + size)
            yield map_tensors(lambda t, part=part: t[part], (self.inputs, self.target))


class GeneratedData:
    """Batches made on the fly by `fn(step, generator) -> (inputs, target)`.

    `generator` is a CPU `torch.Generator` seeded by (seed, rank, step), so each rank
    draws its own batch (the global batch is world_size times fn's batch) and a resumed
    run draws the same batches. The batch size is whatever `fn` returns.
    """

    def __init__(self, fn: Callable[[int, torch.Generator], Batch]):
        self.fn = fn

    def steps_per_epoch(self, batch_size: int) -> None:
        return None

    def batch(self, step: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> Batch:
        g = torch.Generator().manual_seed(derive_seed(seed, _GENERATE, rank, step))
        return self.fn(step, g)


def as_train_data(data: Any) -> TensorData | GeneratedData:
    """Accept a TensorData/GeneratedData, an `(inputs, target)` pair, or a `fn(step, generator)`."""
    if isinstance(data, (TensorData, GeneratedData)):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return TensorData(*data)
    if callable(data):
        return GeneratedData(data)
    raise TrainingError(f"training data must be an (inputs, target) pair of tensors or a "
                        f"fn(step, generator) -> batch, not {type(data).__name__}")


def as_val_data(data: Any) -> TensorData:
    """Accept a TensorData or an `(inputs, target)` pair."""
    if isinstance(data, TensorData):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return TensorData(*data)
    raise TrainingError(f"validation data must be an (inputs, target) pair of tensors, "
                        f"not {type(data).__name__}")
