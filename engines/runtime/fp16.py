"""A float16 copy of an ONNX graph (float32 inputs and outputs): what TensorRT 11 builds fp16 from.

Used by the ONNX export (`mbdl export --fp16`) and by the TensorRT runtime when it builds an
fp16 engine from a graph that has no fp16 copy yet.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx


def to_fp16(src: Path, dst: Path) -> None:
    """model.onnx with float16 weights and arithmetic but float32 inputs and outputs."""
    from onnxconverter_common.float16 import convert_float_to_float16

    with warnings.catch_warnings():  # it warns for each weight below fp16's range, which becomes 0
        warnings.simplefilter("ignore", UserWarning)
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
