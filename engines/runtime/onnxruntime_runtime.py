"""ONNX Runtime engines: an artifact's model.onnx behind the same Engine / TrackerEngine interface.

Built from model.onnx and the card alone (no torch module on the hot path). Execution
providers: TensorRT -> CUDA -> CPU, those of them this onnxruntime build offers
(`device="gpu"`), or the CPU alone (`device="cpu"`). Session options are tuned for the
latency of one call: on the CPU the graph optimization level measured faster for the
graph (`cpu_level`; all optimizations on a GPU), sequential execution, one inter-op
thread and INTRA_OP_THREADS intra-op threads without spinning. Measured at batch 1 on the
2-core dev machine (p50, 200 interleaved calls): lista-cs 1.40 ms with one thread vs
1.56 ms with two, alista-cs 0.45 vs 0.65 ms, unfolded-admm-cs 0.41 vs 0.71 ms; a live
session also runs one worker thread per engine, so one intra-op thread each.

I/O binding where it helps: on a GPU provider the tracker's recurrent state stays on
the device between steps (bound OrtValues, never copied to the host) and only mean and
cov come back; on the CPU a plain `run` already hands numpy arrays through, and binding
them (preallocated output) measured no gain: batch 1, 400 interleaved calls, min
lista-cs 1.278 ms run vs 1.279 ms bound, learned-admm-cs median 0.302 vs 0.294 ms.

Trackers: the graph is one step (inputs "y" + state, outputs "mean", "cov" + next
state, engines/export.py). `reset(n, z0)` takes the initial state, and the outlier gate
its innovation and predict-through step, from the numpy twin of the artifact's module
(engines/tracking/tracker_parts.py): no torch anywhere on this path (the runtime install).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import EngineInfo, Estimate, check_finite
from engines.errors import ArtifactError, BackendUnavailable, EngineError, EngineInputError
from engines.runtime.chunking import run_in_chunks

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
CPU_PROVIDER = "CPUExecutionProvider"
INTRA_OP_THREADS = 1
OPT_LEVELS = ("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED")  # CPU candidates of cpu_level


def _ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailable(f"onnxruntime is not installed ({e})") from None
    return onnxruntime


def available(device: str = "cpu") -> tuple[bool, str]:
    """Whether ONNX Runtime can run here on `device` ("cpu" or "gpu"), and why not."""
    try:
        ort = _ort()
    except BackendUnavailable as e:
        return False, str(e)
    offered = ort.get_available_providers()
    if device == "cpu":
        return (CPU_PROVIDER in offered, f"onnxruntime {ort.__version__} offers {', '.join(offered)}")
    gpu = [p for p in GPU_PROVIDERS if p in offered]
    if not gpu:
        return False, (
            f"onnxruntime {ort.__version__} has no GPU provider (offers {', '.join(offered)}; "
            "install onnxruntime-gpu)"
        )
    return True, f"onnxruntime {ort.__version__} with {', '.join(gpu)}"


def providers(device: str) -> list[str]:
    """The providers for `device` in preference order: TensorRT, CUDA (if offered), then CPU."""
    offered = _ort().get_available_providers()
    gpu = [p for p in GPU_PROVIDERS if p in offered] if device == "gpu" else []
    return [*gpu, CPU_PROVIDER]


_default_threads = [INTRA_OP_THREADS]


def set_default_intra_op_threads(n: int) -> int:
    """Intra-op threads of the sessions opened from now on (`session_options` without `threads`);
    returns the previous value. A live session sets its `intra_op_threads` while it builds its
    engines (issue 15: a sliding-window CORONA alone on 2 cores runs 1.6x faster on 2 threads)."""
    if n < 1:
        raise ValueError(f"intra-op threads must be >= 1, got {n}")
    previous, _default_threads[0] = _default_threads[0], int(n)
    return previous


def session_options(threads: int | None = None, level: str = "ORT_ENABLE_ALL"):
    """SessionOptions for the latency of one call (see the module docstring); `threads` default:
    `set_default_intra_op_threads`'s (INTRA_OP_THREADS unless set)."""
    ort = _ort()
    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.intra_op_num_threads = _default_threads[0] if threads is None else threads
    so.inter_op_num_threads = 1
    # spinning threads would burn the cores that the other engines' workers need
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def open_session(path: Path, device: str = "cpu", level: str = "ORT_ENABLE_ALL"):
    """An InferenceSession of `path` on `device` at graph optimization `level`;
    BackendUnavailable / ArtifactError naming the file."""
    ort = _ort()
    if device == "gpu":
        ok, why = available("gpu")
        if not ok:
            raise BackendUnavailable(f"{path}: {why}")
    try:
        return ort.InferenceSession(str(path), session_options(level=level), providers=providers(device))
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types for a broken file
        raise ArtifactError(f"{path}: ONNX Runtime cannot load it ({str(e).splitlines()[0]})") from None


def cpu_level(path: Path, onnx_sha256: str, example: tuple[int, ...], calls: int = 5) -> str:
    """The faster CPU graph optimization level for `path`, measured once and cached.

    ORT_ENABLE_ALL adds layout transformations (NCHWc) that pay off for convolution
    stacks and cost for graphs that are mostly matrix products and small element-wise
    ops. Measured (batch 1, one thread, min of 8/4 calls): resnet-ceus 33.5 ms at ALL vs
    49.5 ms at EXTENDED; corona-ceus 411 ms at ALL vs 359 ms at EXTENDED; the sparse and
    tracking graphs within 10 %. So each graph gets the level that measures faster here
    (min of `calls` interleaved batch-1 calls on random inputs, the first input at
    `example`'s size), cached in `cache_dir("ort-level")`.
    """
    import json
    import time

    from engines.runtime.cache import cache_dir, cache_key

    record = cache_dir("ort-level") / f"{cache_key(onnx_sha256[:16], _ort().__version__)}.json"
    try:
        return json.loads(record.read_text(encoding="utf-8"))["level"]
    except (OSError, ValueError, KeyError):
        pass
    sessions = {level: open_session(path, "cpu", level) for level in OPT_LEVELS}
    rng = np.random.default_rng(0)
    feeds = {}
    for k, value in enumerate(sessions[OPT_LEVELS[0]].get_inputs()):
        dims = [1] + [
            d if isinstance(d, int) else (example[i] if k == 0 else 1) for i, d in enumerate(value.shape[1:])
        ]
        feeds[value.name] = (0.1 * rng.standard_normal(dims)).astype(np.float32)
    times: dict[str, list[float]] = {level: [] for level in sessions}
    for s in sessions.values():
        s.run(None, feeds)  # warm-up
    for _ in range(calls):
        for level, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            times[level].append(time.perf_counter() - start)
    fastest = {level: min(t) * 1e3 for level, t in times.items()}
    level = min(fastest, key=fastest.get)
    record.write_text(
        json.dumps({"level": level, "min_ms": fastest, "calls": calls}) + "\n", encoding="utf-8"
    )
    return level


def _sizes(dims: list[int | str]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in dims)


def fits(shape: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Whether one batch element's `shape` matches `expected` (-1 = any size)."""
    return len(shape) == len(expected) and all(e in (-1, n) for n, e in zip(shape, expected, strict=True))


def checked_input(info: EngineInfo, x: np.ndarray) -> np.ndarray:
    """`x` as an array of N >= 1 batch elements shaped `info.in_shape`, finite; EngineInputError
    naming the engine otherwise (the check every runtime engine makes before running its graph:
    an empty batch would fail inside the graph, e.g. in a Reshape of N = 0)."""
    x = np.asarray(x)
    if x.ndim < 1 or not fits(x.shape[1:], info.in_shape):
        raise EngineInputError(f"{info.name}: expected input (N, {', '.join(map(str, info.in_shape))}), "
                               f"got {x.shape}")
    if x.shape[0] == 0:
        raise EngineInputError(f"{info.name}: got an empty batch {x.shape}; expected N >= 1 inputs")
    check_finite(info.name, x)
    return x


def info_from_card(card: dict[str, Any], name: str, backend: str) -> EngineInfo:
    """EngineInfo of an exported artifact: shapes from the card's `onnx` entry (a named,
    dynamic axis is -1: any size); the window is T of an imaging input (N, T, C, H, W), else 1."""
    graph = card["onnx"]
    in_shape = _sizes(graph["inputs"][0]["shape"][1:])
    return EngineInfo(
        name=name,
        family=card.get("family", "unfolded"),
        task=card.get("task", ""),
        backend=backend,
        window=in_shape[0] if len(in_shape) == 4 else 1,
        in_shape=in_shape,
        out_shape=_sizes(graph["outputs"][0]["shape"][1:]),
        n_params=graph.get("n_params", 0),
    )


class OrtEngine:
    """Engine: x (N, *in_shape) -> y (N, *out_shape) by an ONNX Runtime session (float32).

    Input of any real dtype is cast to float32. Raises EngineInputError on a wrong shape
    or non-finite input, EngineError when the output is non-finite.
    """

    def __init__(self, info: EngineInfo, session) -> None:
        self.info = info
        self.session = session
        self._output = [session.get_outputs()[0].name]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(checked_input(self.info, x), dtype=np.float32)
        y = run_in_chunks(lambda c: self.session.run(self._output, {"x": c})[0], x)  # bounded memory
        if not np.isfinite(y).all():
            raise EngineError(f"{self.info.name}: the output became non-finite")
        return y


class OrtTrackerEngine:
    """TrackerEngine: the one-step graph, with the recurrent state passed in and out each step.

    `init_state(n, z0)` gives the state at reset (float32 numpy arrays, batch first);
    `has_cov` False means the graph's cov output is zeros and `step` returns cov=None.
    `gate` (engines.tracking.tracker_parts.ArrayGate of the artifact's module) screens each
    step: a missing or outlying observation is not used and its track predicts through.
    """

    def __init__(
        self,
        info: EngineInfo,
        session,
        state_names: tuple[str, ...],
        init_state: Callable[[int, np.ndarray | None], tuple[np.ndarray, ...]],
        has_cov: bool,
        gate,
    ) -> None:
        self.info = info
        self.session = session
        self.state_names = state_names
        self.has_cov = has_cov
        self.gate = gate
        self._init_state = init_state
        self._outputs = ["mean", "cov", *(f"next_{n}" for n in state_names)]
        self._on_device = session.get_providers()[0] != CPU_PROVIDER
        self._state: tuple[Any, ...] | None = None
        self._n = 0

    def reset(self, n: int = 1, z0: np.ndarray | None = None) -> None:
        if n < 1:
            raise EngineInputError(f"{self.info.name}: need n >= 1 tracks, got {n}")
        if z0 is not None:
            z0 = np.asarray(z0, dtype=np.float64)
            if z0.shape != (n, *self.info.out_shape):
                raise EngineInputError(
                    f"{self.info.name}: z0 must be ({n}, {', '.join(map(str, self.info.out_shape))}), "
                    f"got {z0.shape}"
                )
            check_finite(self.info.name, z0)
        state = self._init_state(n, z0)
        if len(state) != len(self.state_names):
            raise EngineError(
                f"{self.info.name}: init_state gave {len(state)} tensors for {self.state_names}"
            )
        self._state = tuple(np.ascontiguousarray(s, dtype=np.float32) for s in state)
        if self._on_device:
            self._state = self._to_device(self._state)
        self.gate.reset(n)
        self._n = n

    @staticmethod
    def _to_device(state) -> tuple[Any, ...]:
        ort = _ort()
        return tuple(ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(s), "cuda", 0) for s in state)

    def step(self, x: np.ndarray) -> Estimate:
        if self._state is None:
            raise EngineError(f"{self.info.name}: step() before reset()")
        x = np.asarray(x)
        if x.shape != (self._n, *self.info.in_shape):
            raise EngineInputError(
                f"{self.info.name}: expected observations ({self._n}, "
                f"{', '.join(map(str, self.info.in_shape))}), got {x.shape}"
            )
        from engines.tracking.gating import observation_rows

        y, finite = observation_rows(x, np.float32)
        if self._on_device:
            mean, cov, *out = self._step_bound(y)
            state, nxt = [s.numpy() for s in self._state], [s.numpy() for s in out]
        else:
            mean, cov, *nxt = self.session.run(
                self._outputs, {"y": y, **dict(zip(self.state_names, self._state, strict=True))}
            )
            state = self._state
        mean, cov, nxt, gated = self.gate(y, finite, state, mean, cov, nxt)
        if not self._on_device:
            self._state = tuple(nxt)
        else:
            self._state = self._to_device(nxt) if gated.any() else tuple(out)
        return Estimate(mean=mean, cov=cov if self.has_cov else None, gated=gated)

    def _step_bound(self, y: np.ndarray) -> list[Any]:
        """One step with I/O binding: state in and out as device OrtValues, mean and cov to the host."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("y", y)
        for name, value in zip(self.state_names, self._state, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("mean", "cpu")
        binding.bind_output("cov", "cpu")
        for name in self.state_names:
            binding.bind_output(f"next_{name}", "cuda", 0)
        self.session.run_with_iobinding(binding)
        out = binding.get_outputs()
        return [out[0].numpy(), out[1].numpy(), *out[2:]]
