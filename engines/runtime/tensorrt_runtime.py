"""TensorRT engines: model.onnx built into a serialized engine on the target device, cached, run.

Imported lazily: `tensorrt` and CUDA are optional, and without them `available()` says
which is missing instead of failing at import. Device buffers are torch CUDA tensors
(torch is already a dependency; no pycuda / cuda-python needed).

Build (TensorRT Python API, TensorRT 10 and 11): parse model.onnx, a WORKSPACE_BYTES
workspace limit, the timing cache of this GPU (reused across builds), one optimization
profile for the batch axis of every input (min/opt/max = BATCH_PROFILE), and the
precision: on TensorRT 10, fp16 is the builder flag; TensorRT 11 removed it (all
networks strongly typed) and reads precision from the graph, so fp16 builds from a
float16 ONNX (the artifact's model.fp16.onnx, or one converted into the cache). The
serialized engine goes to `cache_dir("tensorrt")` under `engine_key(ONNX sha256, GPU
name, compute capability, TensorRT version, precision)`; a later load deserializes it.

Run: `execute_async_v3` on a private CUDA stream with every I/O tensor's address set by
name (`set_input_shape` + `set_tensor_address`), outputs allocated at the shapes the
context reports for the current input shapes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineInfo, Estimate
from engines.errors import ArtifactError, BackendUnavailable, EngineError, EngineInputError
from engines.runtime.cache import cache_dir, cache_key, engine_key
from engines.runtime.onnxruntime_runtime import checked_input

WORKSPACE_BYTES = 1 << 30
BATCH_PROFILE = (1, 8, 32)  # min, opt, max batch of the optimization profile
PRECISIONS = ("fp32", "fp16")


def _trt():
    try:
        import tensorrt
    except ImportError as e:
        raise BackendUnavailable(
            f"tensorrt is not installed ({e}); on a CUDA machine: "
            "pip install 'mbdl-studio[tensorrt]' (JetPack ships it)"
        ) from None
    return tensorrt


def _cuda():
    from engines.optional_torch import require_torch

    torch = require_torch("TensorRT (its device buffers are torch CUDA tensors)")

    if not torch.cuda.is_available():
        raise BackendUnavailable(f"no CUDA device (torch {torch.__version__} sees none), so no TensorRT")
    return torch


def available() -> tuple[bool, str]:
    """Whether TensorRT can build and run engines here, and why not."""
    try:
        trt = _trt()
        torch = _cuda()
    except BackendUnavailable as e:
        return False, str(e)
    return True, f"tensorrt {trt.__version__} on {torch.cuda.get_device_name(0)}"


def major_version(trt) -> int:
    return int(trt.__version__.split(".")[0])


def gpu_identity() -> tuple[str, tuple[int, int]]:
    """The name and compute capability of CUDA device 0 (part of the engine cache key)."""
    torch = _cuda()
    return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def build_serialized(onnx_path: Path, precision: str, example: tuple[int, ...] = ()) -> bytes:
    """Build `onnx_path` into a serialized engine for CUDA device 0 (see the module docstring).

    `onnx_path` already holds float16 arithmetic for fp16 on TensorRT >= 11. An axis other
    than the batch that the graph leaves free (an imaging engine's H, W) is fixed at the
    size of `example` (one batch element of the card's input). Raises
    ArtifactError when the parser rejects the graph, EngineError when the build fails.
    """
    trt = _trt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ArtifactError(f"{onnx_path}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    name, cc = gpu_identity()
    timing_path = (
        cache_dir("tensorrt") / f"timing-{cache_key(name, f'sm{cc[0]}{cc[1]}', trt.__version__)}.cache"
    )
    timing = config.create_timing_cache(timing_path.read_bytes() if timing_path.is_file() else b"")
    config.set_timing_cache(timing, ignore_mismatch=False)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(tensor.shape)[1:]
        rest = tuple(example[i] if n == -1 and i < len(example) else n for i, n in enumerate(dims))
        profile.set_shape(
            tensor.name, (BATCH_PROFILE[0], *rest), (BATCH_PROFILE[1], *rest), (BATCH_PROFILE[2], *rest)
        )
    config.add_optimization_profile(profile)
    if precision == "fp16" and major_version(trt) < 11:
        config.set_flag(trt.BuilderFlag.FP16)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"{onnx_path}: TensorRT {trt.__version__} failed to build an engine ({precision})")
    _write_atomic(timing_path, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def _fp16_graph(onnx_path: Path, onnx_sha256: str, card: dict[str, Any]) -> Path:
    """The float16 graph TensorRT 11 needs for fp16: the artifact's, or one converted into the cache."""
    fp16 = (card.get("onnx") or {}).get("fp16")
    if fp16:
        return onnx_path.parent / fp16["file"]
    from engines.runtime.fp16 import to_fp16

    path = cache_dir("tensorrt") / f"{onnx_sha256[:32]}.fp16.onnx"
    if not path.is_file():
        to_fp16(onnx_path, path)
    return path


def load_or_build(
    onnx_path: Path, onnx_sha256: str, card: dict[str, Any], precision: str = "fp32"
) -> tuple[bytes, bool]:
    """(serialized engine, whether it was built now): from the cache when its key matches."""
    if precision not in PRECISIONS:
        raise BackendUnavailable(
            f"{onnx_path}: precision {precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    trt = _trt()
    name, cc = gpu_identity()
    path = cache_dir("tensorrt") / f"{engine_key(onnx_sha256, name, cc, trt.__version__, precision)}.engine"
    if path.is_file():
        return path.read_bytes(), False
    source = onnx_path
    if precision == "fp16" and major_version(trt) >= 11:
        source = _fp16_graph(onnx_path, onnx_sha256, card)
    shape = (card.get("input") or {}).get("shape") or []
    serialized = build_serialized(source, precision, tuple(d for d in shape[1:] if isinstance(d, int)))
    _write_atomic(path, serialized)
    return serialized, True


class TrtGraph:
    """A deserialized engine and one execution context, run on its own CUDA stream.

    `run(feeds)` takes CUDA tensors by input name (contiguous, batch <= BATCH_PROFILE[2])
    and returns CUDA tensors by output name, valid until the next call.
    """

    def __init__(self, serialized: bytes, where: Path) -> None:
        trt = _trt()
        self._torch = torch = _cuda()
        self._trt = trt
        self.runtime = trt.Runtime(_logger(trt))
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise EngineError(f"{where}: the cached TensorRT engine does not deserialize here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._dtypes = {n: self._torch_dtype(self.engine.get_tensor_dtype(n)) for n in names}
        self.stream = torch.cuda.Stream()
        self._buffers: dict[tuple[str, tuple[int, ...]], Any] = {}

    def _torch_dtype(self, dtype):
        trt, torch = self._trt, self._torch
        table = {
            trt.DataType.FLOAT: torch.float32,
            trt.DataType.HALF: torch.float16,
            trt.DataType.INT32: torch.int32,
            trt.DataType.INT64: torch.int64,
            trt.DataType.BOOL: torch.bool,
        }
        return table[dtype]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        torch = self._torch
        for name in self.inputs:
            tensor = feeds[name].to(self._dtypes[name]).contiguous()
            feeds[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        out = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            key = (name, shape)
            if key not in self._buffers:
                self._buffers[key] = torch.empty(shape, dtype=self._dtypes[name], device="cuda")
            out[name] = self._buffers[key]
            self.context.set_tensor_address(name, out[name].data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream())  # the inputs' host-to-device copies
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineError("TensorRT execute_async_v3 failed")
        self.stream.synchronize()
        return out


class TrtEngine:
    """Engine on TensorRT: x (N, *in_shape) float32 -> y; batches above the profile's max are split."""

    def __init__(self, info: EngineInfo, graph: TrtGraph) -> None:
        self.info = info
        self.graph = graph
        self._output = graph.outputs[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.graph._torch
        x = checked_input(self.info, x)
        parts = []
        for start in range(0, x.shape[0], BATCH_PROFILE[2]):
            chunk = torch.from_numpy(
                np.ascontiguousarray(x[start : start + BATCH_PROFILE[2]], dtype=np.float32)
            )
            y = self.graph.run({"x": chunk.to("cuda")})[self._output]
            parts.append(y.float().cpu().numpy())
        y = np.concatenate(parts)
        if not np.isfinite(y).all():
            raise EngineError(f"{self.info.name}: the output became non-finite")
        return y


class TrtTrackerEngine:
    """TrackerEngine on TensorRT: the one-step graph; the recurrent state stays on the GPU.

    `gate` (engines.tracking.tracker_parts.ArrayGate of the artifact's module) screens each step
    on the host: a missing or outlying observation is not used and its track predicts through.
    """

    def __init__(
        self, info: EngineInfo, graph: TrtGraph, state_names: tuple[str, ...], init_state, has_cov: bool,
        gate,
    ) -> None:
        self.info = info
        self.graph = graph
        self.state_names = state_names
        self.has_cov = has_cov
        self.gate = gate
        self._init_state = init_state
        self._state: tuple[Any, ...] | None = None
        self._n = 0

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        if not 1 <= n <= BATCH_PROFILE[2]:
            raise EngineInputError(
                f"{self.info.name}: TensorRT profile takes 1..{BATCH_PROFILE[2]} tracks, got {n}"
            )
        torch = self.graph._torch
        self._state = tuple(
            torch.as_tensor(np.asarray(s, dtype=np.float32)).to("cuda") for s in self._init_state(n, z0)
        )
        self.gate.reset(n)
        self._n = n

    def step(self, x: np.ndarray) -> Estimate:
        if self._state is None:
            raise EngineError(f"{self.info.name}: step() before reset()")
        torch = self.graph._torch
        x = np.asarray(x)
        if x.shape != (self._n, *self.info.in_shape):
            raise EngineInputError(
                f"{self.info.name}: expected observations ({self._n}, "
                f"{', '.join(map(str, self.info.in_shape))}), got {x.shape}"
            )
        from engines.tracking.gating import observation_rows

        y, finite = observation_rows(x, np.float32)
        feeds = {"y": torch.from_numpy(y).to("cuda"), **dict(zip(self.state_names, self._state, strict=True))}
        out = self.graph.run(feeds)
        # the output buffers are reused by the next call: the next state must be a copy
        nxt = [out[f"next_{n}"].clone() for n in self.state_names]
        host = [s.float().cpu().numpy() for s in nxt]
        mean, cov, held, gated = self.gate(
            y, finite, [s.float().cpu().numpy() for s in self._state], out["mean"].float().cpu().numpy(),
            out["cov"].float().cpu().numpy(), host,
        )
        self._state = tuple(torch.from_numpy(s).to("cuda") for s in held) if gated.any() else tuple(nxt)
        return Estimate(mean=mean, cov=cov if self.has_cov else None, gated=gated)
