"""Which runtime runs an artifact: what is available here, the "auto" choice, and the runtime engines.

Backends: "torch" (the artifact's module), "onnxruntime" (model.onnx; GPU providers when
this onnxruntime build has them, else the CPU), "tensorrt" (model.onnx built on this GPU).
`auto` (issue 6) takes the first that can run the artifact in the order

    tensorrt > onnxruntime-gpu > onnxruntime-cpu / torch

and between the two CPU runtimes by measured speed: a probe (PROBE_CALLS batch-1 calls
of each, interleaved, fewer past PROBE_BUDGET_S) runs once per artifact, machine and
versions and is cached in `cache_dir("backend-probe")` as JSON; the one with the lower
minimum wins (the minimum, not the median: on shared cores a preempted call measures the
neighbours, not the runtime). An artifact without model.onnx runs on torch. Without torch (the
runtime install, issue 18) "auto" takes ONNX Runtime without probing, and "torch" is a one-line
TorchMissing naming the fix.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engines.errors import ArtifactError, BackendUnavailable, EngineError, TorchMissing
from engines.optional_torch import require_torch, torch_installed
from engines.runtime import onnxruntime_runtime as ort_rt
from engines.runtime import tensorrt_runtime as trt_rt
from engines.runtime.cache import cache_dir, cache_key

ONNX_FILE = "model.onnx"
RUNTIMES = ("torch", "onnxruntime", "tensorrt")
PROBE_CALLS = 20
PROBE_BUDGET_S = 2.0

log = logging.getLogger(__name__)


def available_backends() -> dict[str, tuple[bool, str]]:
    """Each backend (ONNX Runtime split by device) -> (usable here, version or why not)."""
    try:
        torch = (True, f"torch {require_torch('the torch backend').__version__}")
    except TorchMissing as e:
        torch = (False, str(e))
    return {
        "tensorrt": trt_rt.available(),
        "onnxruntime-gpu": ort_rt.available("gpu"),
        "onnxruntime-cpu": ort_rt.available("cpu"),
        "torch": torch,
    }


def has_onnx(art) -> bool:
    """Whether the artifact's card lists an exported model.onnx."""
    return ONNX_FILE in art.card.get("files", {}) and "onnx" in art.card


def _onnx_path(art) -> Path:
    if not has_onnx(art):
        raise BackendUnavailable(
            f"{art.path}: has no {ONNX_FILE} in its card; "
            f"run `mbdl export {art.card.get('name', art.path.name)}`"
        )
    return art.path / ONNX_FILE


def _name(art) -> str:
    return art.card.get("name", art.path.name)


def _is_tracker(art) -> bool:
    return art.card["onnx"]["inputs"][0]["name"] == "y"


def _tracker_parts(art, torch_engine: Callable[[], Any]):
    """(state names, init_state(n, z0) -> numpy tuple, has_cov, outlier gate) of a tracker
    artifact: numpy, from its card (engines/tracking/tracker_parts.py), or for an architecture
    without a numpy twin from its torch module (which then needs torch)."""
    from engines.tracking.tracker_parts import ArrayGate, TorchTwin, twin_from_card

    twin = twin_from_card(art.card)
    if twin is None:
        require_torch(f"{_name(art)} (architecture {art.card.get('architecture', {}).get('name')!r}) "
                      "on ONNX Runtime/TensorRT")
        module = getattr(torch_engine(), "module", None)
        if module is None or not hasattr(module, "init_state"):
            raise ArtifactError(f"{art.path}: a tracker graph, but its torch engine exposes "
                                "no module.init_state")
        twin = TorchTwin(module)
    return tuple(twin.state_names), twin.init_state, bool(twin.has_cov), ArrayGate(twin, _name(art))


def onnxruntime_engine(art, torch_engine: Callable[[], Any], device: str | None = None):
    """The artifact on ONNX Runtime: `device` "gpu", "cpu", or None = GPU when available."""
    path = _onnx_path(art)
    if device is None:
        device = "gpu" if ort_rt.available("gpu")[0] else "cpu"
    info = ort_rt.info_from_card(art.card, _name(art), "onnxruntime")
    level = "ORT_ENABLE_ALL"
    if device == "cpu":
        level = ort_rt.cpu_level(path, art.card["onnx"]["sha256"], example_shape(art.card, info))
    session = ort_rt.open_session(path, device, level)
    if _is_tracker(art):
        return ort_rt.OrtTrackerEngine(info, session, *_tracker_parts(art, torch_engine))
    return ort_rt.OrtEngine(info, session)


def tensorrt_engine(art, torch_engine: Callable[[], Any], precision: str = "fp32"):
    """The artifact on TensorRT, built on this GPU or loaded from the engine cache."""
    ok, why = trt_rt.available()
    if not ok:
        raise BackendUnavailable(f"{_name(art)}: TensorRT unavailable: {why}")
    path = _onnx_path(art)
    serialized, built = trt_rt.load_or_build(path, art.card["onnx"]["sha256"], art.card, precision)
    graph = trt_rt.TrtGraph(serialized, path)
    info = ort_rt.info_from_card(art.card, _name(art), "tensorrt")
    engine = (
        trt_rt.TrtTrackerEngine(info, graph, *_tracker_parts(art, torch_engine))
        if _is_tracker(art)
        else trt_rt.TrtEngine(info, graph)
    )
    engine.built = built
    return engine


def example_shape(card: dict[str, Any], info) -> tuple[int, ...]:
    """One batch element's input shape to measure with: the card's (its sizes fill the axes
    an engine takes at any size), else the engine's."""
    shape = (card.get("input") or {}).get("shape") or []
    sizes = tuple(shape[1:])
    ok = len(sizes) == len(info.in_shape) and all(isinstance(d, int) for d in sizes)
    return sizes if ok else info.in_shape


def timed_call(engine, x: np.ndarray) -> float:
    """Seconds of one call: `step(x)` of a tracker, `engine(x)` otherwise."""
    start = time.perf_counter()
    if hasattr(engine, "step"):
        engine.step(x)
    else:
        engine(x)
    return time.perf_counter() - start


def probe_cpu(
    engines: dict[str, Any],
    shape: tuple[int, ...],
    calls: int = PROBE_CALLS,
    budget_s: float = PROBE_BUDGET_S,
) -> dict[str, float]:
    """Minimum batch-1 latency (ms) of each engine on inputs of `shape` (one batch element),
    calls interleaved so that load shifts hit all alike; `calls` rounds, or fewer (at least
    3) once `budget_s` is spent, so that a slow model (a CORONA window: ~1 s) loads in seconds."""
    # a small input keeps every model finite
    x = 0.1 * np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    for e in engines.values():
        if hasattr(e, "reset"):
            e.reset(1)
        timed_call(e, x)  # warm-up: first-call allocations and lazy initialization
    times: dict[str, list[float]] = {k: [] for k in engines}
    start = time.perf_counter()
    for i in range(calls):
        if i >= 3 and time.perf_counter() - start > budget_s:
            break
        for k, e in engines.items():
            times[k].append(timed_call(e, x))
    return {k: float(np.min(v) * 1e3) for k, v in times.items()}


def _probe_path(art) -> Path:
    import onnxruntime
    import torch

    key = cache_key(
        art.card["onnx"]["sha256"][:16],
        f"torch{torch.__version__}",
        f"ort{onnxruntime.__version__}",
        platform.machine(),
        f"cpus{os.cpu_count()}",
    )
    return cache_dir("backend-probe") / f"{key}.json"


def cpu_choice(art, torch_engine: Callable[[], Any]) -> tuple[str, Any]:
    """("onnxruntime" or "torch", the engine or None): the faster CPU runtime, probed once and cached."""
    path = _probe_path(art)
    try:
        return json.loads(path.read_text(encoding="utf-8"))["choice"], None
    except (OSError, ValueError, KeyError):
        pass
    candidates = {"onnxruntime": onnxruntime_engine(art, torch_engine, "cpu"), "torch": torch_engine()}
    fastest = probe_cpu(candidates, example_shape(art.card, candidates["torch"].info))
    choice = min(fastest, key=fastest.get)
    record = {
        "artifact": _name(art),
        "onnx_sha256": art.card["onnx"]["sha256"],
        "min_ms": fastest,
        "choice": choice,
        "calls": PROBE_CALLS,
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return choice, candidates[choice]


def build(art, backend: str, torch_engine: Callable[[], Any], precision: str = "fp32"):
    """The engine of a verified artifact on `backend` ("auto", "torch", "onnxruntime", "tensorrt").

    `torch_engine()` builds the torch engine (also the tracker parts of an architecture
    without a numpy twin, engines/tracking/tracker_parts.py).
    `precision` "fp16" is TensorRT's (an explicit other backend refuses it; "auto" uses it
    when it picks TensorRT and runs float32 elsewhere). Raises BackendUnavailable naming
    the artifact and the reason.
    """
    if precision not in trt_rt.PRECISIONS:
        raise BackendUnavailable(
            f"{_name(art)}: precision {precision!r} is not one of {', '.join(trt_rt.PRECISIONS)}"
        )
    if precision != "fp32" and backend in ("torch", "onnxruntime"):
        raise BackendUnavailable(
            f"{_name(art)}: precision {precision} runs on TensorRT only, not on {backend}"
        )
    if backend == "torch":
        require_torch(f"{_name(art)} on the torch backend")
        return torch_engine()
    if backend == "onnxruntime":
        return onnxruntime_engine(art, torch_engine)
    if backend == "tensorrt":
        return tensorrt_engine(art, torch_engine, precision)
    if backend != "auto":
        raise BackendUnavailable(
            f"{_name(art)}: unknown backend {backend!r}; one of auto, {', '.join(RUNTIMES)}"
        )
    if not has_onnx(art):
        require_torch(f"{_name(art)} (no {ONNX_FILE})")
        return torch_engine()
    if trt_rt.available()[0]:
        try:
            return tensorrt_engine(art, torch_engine, precision)
        except EngineError as e:  # a graph TensorRT cannot build still runs on the next runtime
            log.warning("%s: TensorRT failed, trying ONNX Runtime: %s", _name(art), e)
    if ort_rt.available("gpu")[0]:
        return onnxruntime_engine(art, torch_engine, "gpu")
    if not torch_installed():  # the runtime install: nothing to probe against
        return onnxruntime_engine(art, torch_engine, "cpu")
    choice, engine = cpu_choice(art, torch_engine)
    if engine is not None:
        return engine
    return onnxruntime_engine(art, torch_engine, "cpu") if choice == "onnxruntime" else torch_engine()
