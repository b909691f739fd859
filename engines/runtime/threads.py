"""Intra-op threading of the torch runtime.

A live session runs one worker thread per engine; letting each torch call also fan
out over every core makes small per-step graphs (a Kalman step is a few 3x3 ops)
slower, not faster: thread-pool hand-offs cost more than the arithmetic and the
engines' threads already use the cores. Measured on 2 cores: EKF step p50 0.38 ms
with one intra-op thread, 1.8 ms with two (`mbdl bench session`).
"""

from __future__ import annotations

import sys

from engines.optional_torch import torch_installed


def set_intra_op_threads(n: int) -> int:
    """Set torch's intra-op thread count (process-wide); returns the previous value (0 without
    torch: the runtime install has no torch threads to set, ONNX Runtime sets its own per session)."""
    if not torch_installed():
        return 0
    import torch

    previous = torch.get_num_threads()
    if n > 0 and n != previous:
        torch.set_num_threads(n)
    return previous


def set_intra_op_threads_if_loaded(n: int) -> int:
    """`set_intra_op_threads(n)` when torch is already imported, else nothing (returns 0): a live
    session whose engines all run on ONNX Runtime or numpy never imports torch (~190 MB RSS)
    just to set a thread count it would not use. The session calls this after building each
    engine, so a torch engine gets the setting before its warm-up."""
    if sys.modules.get("torch") is None:
        return 0
    return set_intra_op_threads(n)
