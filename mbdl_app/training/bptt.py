"""Truncated backpropagation through time for recurrent models.

A recurrent model exposes `init_state(x) -> state` (x: the first chunk's inputs
`(N, Tc, ...)`; the batch size, dtype and device are usually all it needs) and either
`step(state, x_t) -> (state, y_t)` for one time step `x_t: (N, ...)`, or a forward over
a chunk `forward(x_chunk, state) -> (y_chunk, state)` (the `nn.GRU` convention). `state`
is a tensor or a tuple/list/dict/dataclass of tensors.

Truncated BPTT with chunk length k (Williams & Peng's BPTT(k, k)): the sequence is cut
into chunks of k steps; each chunk's loss is backpropagated and an update made, and the
state is detached before the next chunk, so no gradient crosses a chunk boundary and
memory is bounded by k steps whatever the sequence length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mbdl_app.training.data import map_tensors


def is_recurrent(model: nn.Module) -> bool:
    """Whether `model` follows the recurrent contract above (it has `init_state`)."""
    return callable(getattr(model, "init_state", None))


def detach_state(state: Any) -> Any:
    """`state` with every tensor detached from the graph (dataclasses included)."""
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return dataclasses.replace(state, **{f.name: detach_state(getattr(state, f.name))
                                             for f in dataclasses.fields(state) if f.init})
    return map_tensors(torch.Tensor.detach, state)


def run_chunk(model: nn.Module, x: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
    """Outputs `(N, Tc, ...)` and the final state of `model` over the chunk `x: (N, Tc, ...)`."""
    if not callable(getattr(model, "step", None)):
        return model(x, state)
    ys = []
    for t in range(x.shape[1]):
        state, y_t = model.step(state, x[:, t])
        ys.append(y_t)
    return torch.stack(ys, dim=1), state


def rollout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Outputs `(N, T, ...)` of `model` over the whole sequence `x: (N, T, ...)` from its initial state."""
    y, _ = run_chunk(model, x, model.init_state(x))
    return y


class ChunkRunner(nn.Module):
    """`forward(x_chunk, state)` for a recurrent model, starting from `init_state` when state is None.

    Wrapping this (not the bare model) in DistributedDataParallel routes every chunk
    through DDP's forward, which is what arms its gradient all-reduce.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        if state is None:
            state = self.model.init_state(x)
        return run_chunk(self.model, x, state)


def truncated_bptt(net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], chunk: int,
                   update: Callable[[torch.Tensor], None]) -> float:
    """Run `net` (a ChunkRunner, possibly DDP-wrapped) over `x: (N, T, ...)` in chunks of `chunk`.

    For each chunk, `update(loss)` gets the chunk's loss `loss_fn(y_hat, y[:, chunk])` with
    its graph (it backpropagates and steps the optimizer); then the state is detached.
    Returns the chunk losses' mean weighted by chunk length.
    """
    state, total, T = None, 0.0, x.shape[1]
    for start in range(0, T, chunk):
        y_hat, state = net(x[:, start:start + chunk], state)
        loss = loss_fn(y_hat, y[:, start:start + chunk])
        update(loss)
        total += float(loss.detach()) * y_hat.shape[1]
        state = detach_state(state)
    return total / T
