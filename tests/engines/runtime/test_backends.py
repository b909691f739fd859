"""Backend choice and the runtime engines' errors: auto, explicit backends, corrupt files, TensorRT absent."""

import json

import numpy as np
import pytest

import engines
import exported_models
from engines.artifacts import CARD, sha256_of
from engines.base import EngineInfo
from engines.errors import ArtifactError, BackendUnavailable, EngineError, EngineInputError
from engines.export import ONNX_FILE, export_artifact, export_module
from engines.load import accepted_params, load_artifact
from engines.runtime import onnxruntime_runtime as ort_rt
from engines.runtime import tensorrt_runtime as trt_rt
from engines.runtime.backends import available_backends
from engines.runtime.cache import engine_key
from engines.tracking.tracker_parts import ArrayGate, TorchTwin
from mbdl_app.cli import parse_engine_spec

from .conftest import TinyTracker, write_tiny_artifact


@pytest.fixture
def exported(tmp_path):
    folder = write_tiny_artifact(tmp_path / "tiny")
    export_artifact(folder)
    return folder


def test_a_corrupted_model_onnx_is_an_artifact_error_naming_it(exported):
    path = exported / ONNX_FILE
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x01
    path.write_bytes(bytes(data))
    for backend in ("onnxruntime", "torch", "auto"):
        with pytest.raises(ArtifactError, match=r"model\.onnx: sha256 .* does not match"):
            load_artifact(exported, backend)


def test_a_model_onnx_that_onnxruntime_cannot_read_is_an_artifact_error_naming_it(exported):
    (exported / ONNX_FILE).write_bytes(b"not a protobuf")
    card = json.loads((exported / CARD).read_text())
    card["files"][ONNX_FILE] = sha256_of(exported / ONNX_FILE)  # a mismatched file with a matching card
    (exported / CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"model\.onnx: ONNX Runtime cannot load it"):
        load_artifact(exported, "onnxruntime")


def test_without_model_onnx_auto_runs_on_torch_and_onnxruntime_says_how_to_export(tmp_path):
    folder = write_tiny_artifact(tmp_path / "tiny")
    assert load_artifact(folder, "auto").info.backend == "torch"
    with pytest.raises(BackendUnavailable, match="mbdl export tiny"):
        load_artifact(folder, "onnxruntime")


def test_auto_on_the_cpu_takes_the_faster_runtime_once_measured_and_cached(exported, private_cache):
    engine = load_artifact(exported, "auto")
    (probe,) = (private_cache / "backend-probe").glob("*.json")
    record = json.loads(probe.read_text())
    assert record["choice"] == engine.info.backend in ("onnxruntime", "torch")
    assert record["choice"] == min(record["min_ms"], key=record["min_ms"].get)
    # the cached verdict decides later loads (no new measurement): flip it and see it followed
    other = "torch" if record["choice"] == "onnxruntime" else "onnxruntime"
    probe.write_text(json.dumps({**record, "choice": other}))
    assert load_artifact(exported, "auto").info.backend == other


def test_each_backend_runs_the_same_model_with_the_same_extras(exported):
    x = np.random.default_rng(0).normal(0, 0.3, (5, 20))
    t, o = load_artifact(exported, "torch"), load_artifact(exported, "onnxruntime")
    assert o.info.backend == "onnxruntime" and o.info.n_params == t.info.n_params > 0
    np.testing.assert_array_equal(o.operator, t.operator)
    assert o.card["name"] == "tiny" and o.artifact_sha256 == t.artifact_sha256
    np.testing.assert_allclose(o(x), t(x), rtol=0, atol=1e-5)
    with pytest.raises(EngineInputError, match="tiny: expected input"):
        o(np.zeros((2, 21)))
    with pytest.raises(EngineInputError, match="non-finite"):
        o(np.full((1, 20), np.nan))
    with pytest.raises(BackendUnavailable, match="unknown backend 'cuda'"):
        load_artifact(exported, "cuda")


def test_tensorrt_absent_says_why():
    ok, why = trt_rt.available()
    if ok:
        pytest.skip(f"TensorRT is available here ({why})")
    assert "tensorrt" in why.lower() or "cuda" in why.lower()
    assert available_backends()["tensorrt"] == (False, why)


def test_tensorrt_backend_without_tensorrt_is_backend_unavailable_naming_the_engine(exported):
    ok, why = trt_rt.available()
    if ok:
        pytest.skip(f"TensorRT is available here ({why})")
    with pytest.raises(BackendUnavailable, match="tiny: TensorRT unavailable"):
        load_artifact(exported, "tensorrt")


def test_engine_cache_key_names_every_part_that_invalidates_an_engine():
    key = engine_key("ab" * 32, "NVIDIA Jetson AGX Orin", (8, 7), "10.3.0", "fp16")
    assert "abababab" in key and "Orin" in key and "sm87" in key and "trt10.3.0" in key and "fp16" in key
    assert engine_key("ab" * 32, "NVIDIA Jetson AGX Orin", (8, 7), "10.3.0", "fp32") != key


def test_the_backend_of_an_engine_spec_reaches_the_loaded_engine():
    spec = parse_engine_spec("alista-cs:onnxruntime")
    assert spec.backend == "onnxruntime"
    assert engines.load(spec.name, backend=spec.backend).info.backend == "onnxruntime"
    assert engines.load(spec.name, backend="torch").info.backend == "torch"


def tiny_tracker_on_onnxruntime(tmp_path):
    module = TinyTracker().eval()
    path = tmp_path / "tracker.onnx"
    export_module(module, {"input": {"shape": ["N", 2]}}, path, path)
    info = EngineInfo("tiny-tracker", "dnn-aided", "tracking", "onnxruntime", 1, (2,), (2,))
    return ort_rt.OrtTrackerEngine(
        info,
        ort_rt.open_session(path),
        module.state_names,
        lambda n, z0: tuple(s.numpy() for s in module.init_state(n)),
        True,
        ArrayGate(TorchTwin(module), "tiny-tracker"),
    )


def test_onnxruntime_tracker_checks_its_inputs_and_keeps_state_on_errors(tmp_path):
    engine = tiny_tracker_on_onnxruntime(tmp_path)
    with pytest.raises(EngineError, match="before reset"):
        engine.step(np.zeros((1, 2)))
    engine.reset(2)
    with pytest.raises(EngineInputError, match=r"expected observations \(2, 2\)"):
        engine.step(np.zeros((3, 2)))
    with pytest.raises(EngineInputError, match="z0 must be"):
        engine.reset(2, np.zeros((2, 3)))
    first = engine.step(np.ones((2, 2)))
    engine.reset(2)
    assert np.array_equal(engine.step(np.ones((2, 2))).mean, first.mean)  # reset restarts the tracks


def test_onnxruntime_tracker_predicts_through_a_missing_or_outlying_observation_and_says_so(tmp_path):
    engine = tiny_tracker_on_onnxruntime(tmp_path)
    engine.reset(2)
    ys = np.cumsum(np.random.default_rng(0).normal(0, 0.5, (40, 2, 2)), axis=0)
    for y in ys[:20]:
        assert not engine.step(y).gated.any()
    x = engine._state[0].copy()
    bad = ys[20].copy()
    bad[0] = 1e30  # track 0: an outlier; track 1: missing
    bad[1, 1] = np.nan
    est = engine.step(bad)
    assert est.gated.tolist() == [True, True]
    np.testing.assert_allclose(est.mean, x @ TinyTracker().F.numpy().T, rtol=1e-6)  # the prediction
    for y in ys[21:]:  # the next good observations are filtered as usual
        est = engine.step(y)
        assert not est.gated.any() and np.isfinite(est.mean).all()


def test_runtime_engine_info_takes_the_window_of_an_imaging_input_from_the_card():
    card = {
        "family": "unfolded",
        "task": "clutter-suppression",
        "onnx": {"inputs": [{"shape": ["N", 20, 2, 32, 32]}], "outputs": [{"shape": ["N", 20, 2, 32, 32]}]},
    }
    info = ort_rt.info_from_card(card, "corona", "onnxruntime")
    assert info.window == 20 and info.in_shape == (20, 2, 32, 32) and info.task == "clutter-suppression"
    card["onnx"]["inputs"][0]["shape"] = ["N", 250]
    assert ort_rt.info_from_card(card, "lista", "onnxruntime").window == 1


def test_fp16_is_tensorrt_s_precision_and_reaches_the_builder_as_a_parameter(exported, monkeypatch):
    with pytest.raises(BackendUnavailable, match="fp16 runs on TensorRT only, not on onnxruntime"):
        load_artifact(exported, "onnxruntime", precision="fp16")
    with pytest.raises(BackendUnavailable, match="precision 'int8' is not one of"):
        load_artifact(exported, "auto", precision="int8")
    monkeypatch.setattr(exported_models, "artifact_dirs", lambda: [exported])
    assert "precision" in accepted_params("tiny")  # a session config's params may set it
    if not trt_rt.available()[0]:  # auto without TensorRT runs float32 on the CPU
        assert engines.load("tiny", precision="fp16").info.backend in ("onnxruntime", "torch")


def test_the_cpu_graph_optimization_level_is_measured_once_and_cached(exported, private_cache):
    load_artifact(exported, "onnxruntime")
    (record,) = (private_cache / "ort-level").glob("*.json")
    measured = json.loads(record.read_text())
    assert measured["level"] in ort_rt.OPT_LEVELS and set(measured["min_ms"]) == set(ort_rt.OPT_LEVELS)
    assert measured["level"] == min(measured["min_ms"], key=measured["min_ms"].get)
    record.write_text(json.dumps({**measured, "level": "ORT_ENABLE_BASIC"}))
    sha = json.loads((exported / CARD).read_text())["onnx"]["sha256"]
    assert ort_rt.cpu_level(exported / ONNX_FILE, sha, (20,)) == "ORT_ENABLE_BASIC"  # read, not re-measured


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_an_empty_batch_to_corona_is_a_one_line_engine_input_error(backend):
    engine = engines.load("corona-ceus", backend=backend)
    with pytest.raises(EngineInputError, match=r"^corona-ceus: got an empty batch \(0, 20, 2, 32, 32\)"):
        engine(np.zeros((0, 20, 2, 32, 32), np.float32))


def test_an_empty_batch_is_an_engine_input_error_on_onnxruntime(exported):
    with pytest.raises(EngineInputError, match=r"tiny: got an empty batch \(0, 20\)"):
        load_artifact(exported, "onnxruntime")(np.zeros((0, 20)))
