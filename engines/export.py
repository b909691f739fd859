"""Exporting an artifact's torch module to ONNX: model.onnx beside its weights, recorded in the card.

The graph follows the agreed contract (ARCHITECTURE.md "Formats"):
- stateless artifacts (sparse coding, imaging): `forward(x) -> y`, input "x", output "y";
- stateful trackers: ONE step, `step_tensors(y, *state) -> (mean, cov, *next_state)`, inputs
  "y" and the module's `state_names`, outputs "mean", "cov" and "next_<name>" per state, so
  the recurrent state is an explicit input/output and no runtime keeps hidden state.
Every input and output has a dynamic batch axis 0, and so has every axis the torch engine
takes at any size (an imaging engine's H, W); an imaging engine that returns the newest
frame of its window (T_out = 1) is exported with that cut. Exported with the TorchScript exporter
(`dynamo=False`) at opset 17 and checked with `onnx.checker`. `--fp16` adds
model.fp16.onnx (float16 inside, float32 inputs/outputs): the precision TensorRT 11 reads
from the graph instead of a builder flag.

`export_artifact(directory)` rebuilds the torch module from the verified artifact (the
module that `engines.load(name, backend="torch")` runs, so ONNX and torch cannot drift),
writes the file(s) and rewrites card.json: `files` gains their sha256 and `onnx` says
opset, inputs, outputs (name, shape, dtype), sha256 and the fp16 file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from engines.artifacts import CARD, sha256_of
from engines.base import EngineInfo
from engines.errors import ArtifactError
from engines.load import engine_tasks, load_artifact
from engines.runtime.fp16 import to_fp16

OPSET = 17
ONNX_FILE = "model.onnx"
ONNX_FP16_FILE = "model.fp16.onnx"
EXAMPLE_BATCH = 2  # > 1, so that no size-1 axis is mistaken for a broadcast one while tracing
HALF_SIZE_RTOL = 1e-4  # a baked-in size gives O(1) errors; rounding gives ~1e-6


def _matrix_transpose(g, self):
    """aten::mT: the last two axes swapped."""
    perm = list(range(self.type().dim()))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    return g.op("Transpose", self, perm_i=perm)


def _sign(g, self):
    """aten::sgn (sign, complex-aware) on the real tensors that ONNX carries: ONNX Sign."""
    return g.op("Sign", self)


# ops the TorchScript exporter lacks at opset 17 (the engines' code keeps the readable form)
torch.onnx.register_custom_op_symbolic("aten::mT", _matrix_transpose, OPSET)
torch.onnx.register_custom_op_symbolic("aten::sgn", _sign, OPSET)


class _OneStep(nn.Module):
    """A tracker module's `step_tensors` as `forward`, the graph of one time step."""

    def __init__(self, tracker: nn.Module) -> None:
        super().__init__()
        self.tracker = tracker

    def forward(self, y: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.tracker.step_tensors(y, *state))


def is_tracker(module: nn.Module) -> bool:
    """Whether `module` follows the stateful tracker contract (state_names, init_state, step_tensors)."""
    return all(hasattr(module, a) for a in ("state_names", "init_state", "step_tensors"))


def _example_input(card: dict[str, Any], where: Path) -> Tensor:
    shape = (card.get("input") or {}).get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) for d in shape[1:]):
        raise ArtifactError(f'{where}: input.shape must be ["N", d1, ...] with integer sizes, got {shape!r}')
    return torch.randn(EXAMPLE_BATCH, *shape[1:], generator=torch.Generator().manual_seed(0))


class _NewestFrame(nn.Module):
    """An imaging module's window output cut to its newest frame: T_out = 1 (engines/base.py)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x)[:, -1:]


def graph_spec(module: nn.Module, card: dict[str, Any], where: Path, info: EngineInfo | None = None):
    """(graph module, example inputs, input names, output names) for the contract of `module`.

    `info`, the torch engine's, says what the engine returns where the module returns more:
    an imaging engine (input (N, T, C, H, W)) with T_out = 1 returns the newest frame of
    the module's window output, and so does the graph.
    """
    x = _example_input(card, where)
    if not is_tracker(module):
        newest = info is not None and len(info.in_shape) == 4 and info.window > 1 and info.out_shape[0] == 1
        return (_NewestFrame(module) if newest else module), (x,), ["x"], ["y"]
    names = tuple(module.state_names)
    state = tuple(module.init_state(EXAMPLE_BATCH, None))
    if len(state) != len(names):
        raise ArtifactError(f"{where}: init_state returned {len(state)} tensors for state_names {names}")
    return (_OneStep(module), (x, *state), ["y", *names], ["mean", "cov", *(f"next_{n}" for n in names)])


def _dynamic_axes(names: list[str], shape: tuple[int, ...] | None) -> dict[str, dict[int, str]]:
    """Batch axis 0 of every tensor, and the axes the engine takes at any size (-1 in its info),
    named per tensor: an output's free size need not equal the input's (ULM upsamples)."""
    return {
        name: {0: "N", **{i + 1: f"{name}_d{i + 1}" for i, n in enumerate(shape or ()) if n == -1}}
        for name in names
    }


def export_module(
    module: nn.Module, card: dict[str, Any], path: Path, where: Path, info: EngineInfo | None = None
) -> None:
    """Write the contract graph of `module` (float32) to `path` and check it.

    With the torch engine's `info`, the axes it takes at any size (e.g. an imaging
    engine's H, W) stay dynamic in the graph, if the graph holds at another size: tracing
    can bake a size into a reshape, so the graph is run at half the card's sizes and
    compared with torch; where it differs, every such axis is fixed at the card's size
    (an engine on that graph then refuses other sizes instead of computing wrong ones).
    """
    graph, example, inputs, outputs = graph_spec(module.float().eval(), card, where, info)
    free_in, free_out = (info.in_shape, info.out_shape) if info is not None else ((), ())
    _trace(graph, example, inputs, outputs, path, free_in, free_out)
    if -1 in free_in and not _holds_at_half_size(graph, example, free_in, path):
        _trace(graph, example, inputs, outputs, path, (), ())


def _trace(graph, example, inputs, outputs, path: Path, free_in, free_out) -> None:
    dynamic = {
        **_dynamic_axes(inputs[:1], free_in),
        **_dynamic_axes(inputs[1:], None),
        **_dynamic_axes(outputs[:1], free_out),
        **_dynamic_axes(outputs[1:], None),
    }
    with warnings.catch_warnings(), torch.no_grad():
        # tracing turns sizes into constants (e.g. support selection's k); the batch axis stays dynamic
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the contract names the TorchScript exporter
        torch.onnx.export(
            graph,
            example,
            str(path),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
        sizes = [tuple(t.shape) for t in _as_tuple(graph(*example))]
    # shape inference loses sizes behind Where/Add broadcasts; the traced outputs know them
    model = onnx.load(str(path))
    for value, size in zip(model.graph.output, sizes, strict=True):
        for axis, (dim, n) in enumerate(zip(value.type.tensor_type.shape.dim, size, strict=True)):
            if axis not in dynamic[value.name]:
                dim.Clear()
                dim.dim_value = n
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def _holds_at_half_size(graph: nn.Module, example: tuple[Tensor, ...], free_in, path: Path) -> bool:
    """Whether the stateless graph at `path` equals torch on an input with its free axes halved."""
    import onnxruntime

    x = example[0]
    shape = [max(1, n // 2) if i > 0 and free_in[i - 1] == -1 else n for i, n in enumerate(x.shape)]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = graph(x).numpy()
    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": x.numpy()})
    except Exception:  # onnxruntime's own error types: a shape baked in that no longer fits
        return False
    return y.shape == expected.shape and bool(
        np.linalg.norm(y - expected) <= HALF_SIZE_RTOL * np.linalg.norm(expected)
    )


def _as_tuple(out: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _tensor_spec(values) -> list[dict[str, Any]]:
    elem = onnx.helper.tensor_dtype_to_np_dtype
    return [
        {
            "name": v.name,
            "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            "dtype": str(elem(v.type.tensor_type.elem_type)),
        }
        for v in values
    ]


def exportable(directory: str | Path) -> bool:
    """Whether the artifact's card names a task with an engine, i.e. a torch module to export."""
    card = json.loads((Path(directory) / CARD).read_text(encoding="utf-8"))
    return card.get("task") in engine_tasks()


def torch_engine(directory: Path):
    """The artifact's torch engine, from its verified weights; its `module` is what is exported."""
    engine = load_artifact(directory, backend="torch")
    if not isinstance(getattr(engine, "module", None), nn.Module):
        raise ArtifactError(f"{directory / CARD}: its torch engine exposes no nn.Module to export")
    return engine


def export_artifact(directory: str | Path, fp16: bool = False) -> dict[str, Any]:
    """Export the artifact in `directory` to model.onnx (and model.fp16.onnx with `fp16`).

    Rewrites card.json with the files' sha256 under `files` and the graph under `onnx`;
    returns that `onnx` entry. A previous fp16 file that is not regenerated is removed
    from the card and the folder (it would no longer match model.onnx). Raises
    ArtifactError naming the artifact when it cannot be read or exported.
    """
    directory = Path(directory)
    engine = torch_engine(directory)
    module = engine.module
    card_path = directory / CARD
    card = json.loads(card_path.read_text(encoding="utf-8"))
    path = directory / ONNX_FILE
    try:
        export_module(module, card, path, card_path, engine.info)
    except (RuntimeError, TypeError, ValueError, onnx.checker.ValidationError) as e:
        raise ArtifactError(f"{directory}: ONNX export failed: {str(e).splitlines()[0]}") from None
    graph = onnx.load(str(path)).graph
    files = {k: v for k, v in card["files"].items() if k != ONNX_FP16_FILE}
    files[ONNX_FILE] = sha256_of(path)
    entry: dict[str, Any] = {
        "opset": OPSET,
        "inputs": _tensor_spec(graph.input),
        "n_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "outputs": _tensor_spec(graph.output),
        "sha256": files[ONNX_FILE],
        "exporter": f"torch {torch.__version__} (TorchScript), onnx {onnx.__version__}",
        "fp16": None,
    }
    fp16_path = directory / ONNX_FP16_FILE
    if fp16:
        to_fp16(path, fp16_path)
        files[ONNX_FP16_FILE] = sha256_of(fp16_path)
        entry["fp16"] = {"file": ONNX_FP16_FILE, "sha256": files[ONNX_FP16_FILE]}
    else:
        fp16_path.unlink(missing_ok=True)
    card["files"], card["onnx"] = files, entry
    card_path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return entry
