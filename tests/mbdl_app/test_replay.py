"""What `mbdl info` says about a recording (mbdl_app.session.replay.describe)."""

import numpy as np
import pytest

from drivers.base import Sample, SourceInfo
from drivers.recording import RecordingWriter
from mbdl_app.session.replay import describe

LORENZ = SourceInfo("sim:lorenz?rate=500", "samples", (3,), 500.0, {"model": {"dt": 0.02}})


def test_info_gives_each_stream_its_device_time_span_and_acquisition_wall_span(tmp_path):
    path = tmp_path / "lorenz.h5"
    with RecordingWriter(path, {"lorenz": LORENZ}) as w:
        # 1001 samples: the simulator's clock advances dt = 0.02 s per sample, the host
        # acquires them at 500 per wall second
        w.append_items("lorenz", [Sample(i, 0.02 * i, np.zeros(3), t_host=100.0 + i / 500)
                                  for i in range(1001)])
    stream = describe(path)["streams"]["lorenz"]
    assert stream["items"] == 1001 and stream["nominal_rate_hz"] == 500.0
    assert stream["device_time_span_s"] == pytest.approx(20.0)
    assert stream["acquisition_wall_span_s"] == pytest.approx(2.0)
    assert "duration_s" not in stream and "rate_hz" not in stream  # the ambiguous names are gone


def test_info_of_an_empty_stream_gives_zero_spans(tmp_path):
    path = tmp_path / "empty.h5"
    RecordingWriter(path, {"lorenz": LORENZ}).close()
    stream = describe(path)["streams"]["lorenz"]
    assert (stream["items"], stream["device_time_span_s"], stream["acquisition_wall_span_s"]) == (0, 0.0, 0.0)
    assert "repaired" not in describe(path)
