"""A live session opens its ONNX Runtime engines with its `intra_op_threads` (issue 15 part 2: the
sliding-window CORONA alone on 2 cores) and leaves the process default as it was."""

import pytest

from engines.runtime import onnxruntime_runtime as ort_rt
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session.session import Session


def _ort_session(engine):
    for obj in (engine, getattr(engine, "engine", None), getattr(engine, "inner", None)):
        if obj is not None and hasattr(obj, "session"):
            return obj.session
    raise AssertionError(f"no ONNX Runtime session on {type(engine).__name__}")


@pytest.mark.parametrize("threads", [1, 2])
def test_session_gives_its_onnxruntime_engines_its_intra_op_threads_and_restores_the_default(threads):
    cfg = SessionConfig(sources=[SourceConfig(name="lorenz", uri="sim:lorenz?seed=3&rate=200&n=20")],
                        engines=[EngineConfig(name="kalmannet-lorenz", backend="onnxruntime",
                                              source="lorenz")])
    s = Session(cfg, intra_op_threads=threads)
    s.start()
    try:
        opts = _ort_session(s.engines["kalmannet-lorenz"]).get_session_options()
        assert opts.intra_op_num_threads == threads
    finally:
        s.stop()
    assert ort_rt.session_options().intra_op_num_threads == ort_rt.INTRA_OP_THREADS


def test_a_thread_count_below_one_is_refused():
    with pytest.raises(ValueError, match="intra-op threads must be >= 1"):
        ort_rt.set_default_intra_op_threads(0)
