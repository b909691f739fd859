"""Export of recordings: written with RecordingWriter, exported, read back with other tools'
readers (tifffile, csv, a MetaImage parser) and compared value by value."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile

from drivers import FormatError, Frame, Sample, SourceEnded, SourceInfo, open_source
from drivers.export import (
    ExportError,
    export_ome_tiff,
    export_recording,
    export_seq_mha,
    export_tracks_csv,
    pixel_size_um,
)
from drivers.recording import RecordingWriter, ResultRow, ResultSpec

C, H, W, NF, NS = 2, 6, 7, 5, 12


@pytest.fixture
def recording(tmp_path: Path) -> dict:
    """A small session: frames 'us' (I/Q, irregular times) and samples 'pos' with truth,
    an EKF with covariances on every sample but two, and a KalmanNet on every third."""
    rng = np.random.default_rng(3)
    frames = rng.normal(size=(NF, C, H, W)).astype(np.float32)
    t_frames = np.array([0.0, 0.01, 0.025, 0.03, 0.05]) + 7.0
    values = rng.normal(size=(NS, 3))
    state = rng.normal(size=(NS, 3))
    streams = {
        "us": SourceInfo("sim:ceus?size=7", "frames", (C, H, W), 100.0,
                         {"pixel_size_um": [120.0, 150.0], "channels": ["I", "Q"]}),
        "pos": SourceInfo("serial:/dev/ttyUSB0", "samples", (3,), 50.0, {},
                          truth_shapes={"state": (3,)}),
    }
    ekf_idx = [k for k in range(NS) if k not in (4, 9)]
    knet_idx = list(range(0, NS, 3))
    ekf = rng.normal(size=(NS, 3))
    cov = rng.normal(size=(NS, 3, 3)).astype(np.float32)
    knet = rng.normal(size=(NS, 3)).astype(np.float32)
    path = tmp_path / "session.h5"
    w = RecordingWriter(path, streams, results=[
        ResultSpec("pos", "ekf", (3,), (3, 3)), ResultSpec("pos", "kalmannet", (3,))])
    w.append_items("us", [Frame(k, float(t_frames[k]), frames[k], t_host=100.0 + k)
                          for k in range(NF)])
    w.append_items("pos", [Sample(k, 0.02 * k, values[k], {"state": state[k]}, t_host=200.0 + k)
                           for k in range(NS)])
    w.append_results("pos", "ekf", [ResultRow(k, 0.02 * k, ekf[k], 1e-4 * k, (1.0, 2.0, 3.0),
                                              cov[k]) for k in ekf_idx])
    w.append_results("pos", "kalmannet", [ResultRow(k, 0.02 * k, knet[k], 2e-4, (1.0, 2.0, 3.0))
                                          for k in knet_idx])
    w.close()
    return {"path": path, "frames": frames, "t_frames": t_frames, "values": values,
            "state": state, "ekf": ekf.astype(np.float32), "cov": cov, "knet": knet,
            "ekf_idx": ekf_idx, "knet_idx": knet_idx}


def test_ome_tiff_round_trip_keeps_frames_pixel_size_and_times(recording, tmp_path):
    out = export_ome_tiff(recording["path"], "us", tmp_path / "us.ome.tif")
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "TCYX"
        np.testing.assert_array_equal(tif.asarray(), recording["frames"])
        root = ET.fromstring(tif.ome_metadata)
    ns = {"ome": root.tag[1:].split("}")[0]}
    pixels = root.find(".//ome:Pixels", ns)
    assert float(pixels.get("PhysicalSizeY")) == 120.0
    assert float(pixels.get("PhysicalSizeX")) == 150.0
    assert float(pixels.get("TimeIncrement")) == pytest.approx(0.01)
    assert [c.get("Name") for c in pixels.findall("ome:Channel", ns)] == ["I", "Q"]
    planes = pixels.findall("ome:Plane", ns)
    assert len(planes) == NF * C
    for p in planes:
        k = int(p.get("TheT"))
        assert float(p.get("DeltaT")) == recording["t_frames"][k] - recording["t_frames"][0]


def test_exported_ome_tiff_reads_back_through_the_tiff_source(recording, tmp_path):
    out = export_ome_tiff(recording["path"], "us", tmp_path / "us.ome.tif")
    with open_source(f"tiff:{out}?speed=0") as src:
        assert src.memmapped
        assert src.info.shape == (C, H, W)
        assert src.info.meta["pixel_size_um"] == [120.0, 150.0]
        assert src.info.rate_hz == pytest.approx(100.0)
        got = [src.read(1.0).data for _ in range(NF)]
        with pytest.raises(SourceEnded):
            src.read(1.0)
    np.testing.assert_array_equal(np.stack(got), recording["frames"])


def test_gray_stream_exports_as_tyx_and_reads_back(tmp_path):
    frames = np.random.default_rng(4).random((3, 1, H, W), dtype=np.float32)
    path = tmp_path / "gray.h5"
    info = SourceInfo("video:clip.avi", "frames", (1, H, W), 25.0, {"channels": ["gray"]})
    with RecordingWriter(path, {"cam": info}) as w:
        w.append_items("cam", [Frame(k, k / 25, frames[k]) for k in range(3)])
    out = export_ome_tiff(path, "cam", tmp_path / "cam.ome.tif")
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].axes == "TYX"
        np.testing.assert_array_equal(tif.asarray(), frames[:, 0])
        assert "PhysicalSizeX" not in tif.ome_metadata  # unknown stays unknown
    with open_source(f"tiff:{out}?speed=0") as src:
        assert src.info.shape == (1, H, W)
        np.testing.assert_array_equal(src.read(1.0).data, frames[0])


def test_tracks_csv_round_trip_joins_engines_on_the_sample_index(recording, tmp_path):
    out = export_tracks_csv(recording["path"], "pos", tmp_path / "pos.csv")
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == NS
    assert list(rows[0])[:9] == ["index", "t", "t_host", "value_0", "value_1", "value_2",
                                 "truth_state_0", "truth_state_1", "truth_state_2"]
    for k, row in enumerate(rows):
        assert int(row["index"]) == k
        assert float(row["t"]) == 0.02 * k and float(row["t_host"]) == 200.0 + k
        for j in range(3):
            assert float(row[f"value_{j}"]) == recording["values"][k, j]  # exact: repr
            assert float(row[f"truth_state_{j}"]) == recording["state"][k, j]
        if k in recording["ekf_idx"]:
            for j in range(3):
                assert float(row[f"ekf_{j}"]) == recording["ekf"][k, j]
                assert float(row[f"ekf_var_{j}"]) == recording["cov"][k, j, j]
            assert float(row["ekf_latency_s"]) == 1e-4 * k
        else:
            assert row["ekf_0"] == row["ekf_var_2"] == row["ekf_latency_s"] == ""
        if k in recording["knet_idx"]:
            assert [float(row[f"kalmannet_{j}"]) for j in range(3)] == \
                recording["knet"][k].tolist()
            assert "kalmannet_var_0" not in row
        else:
            assert row["kalmannet_0"] == ""


def test_seq_mha_export_writes_the_header_fields_and_every_frame_exactly(recording, tmp_path):
    out = export_seq_mha(recording["path"], "us", tmp_path / "us.seq.mha")
    raw = out.read_bytes()
    head, _, data = raw.partition(b"ElementDataFile = LOCAL\n")
    fields = dict(line.split(" = ", 1) for line in head.decode().splitlines())
    assert fields["DimSize"] == f"{W} {H} {NF}"
    assert fields["ElementNumberOfChannels"] == str(C)
    assert fields["ElementType"] == "MET_FLOAT" and fields["BinaryDataByteOrderMSB"] == "False"
    assert [float(v) for v in fields["ElementSpacing"].split()] == [0.15, 0.12, 1.0]  # mm
    for k in range(NF):
        assert float(fields[f"Seq_Frame{k:04d}_Timestamp"]) == recording["t_frames"][k]
    pixels = np.frombuffer(data, "<f4").reshape(NF, H, W, C)
    np.testing.assert_array_equal(pixels.transpose(0, 3, 1, 2), recording["frames"])


def test_export_recording_writes_every_stream(recording, tmp_path):
    files = export_recording(recording["path"], tmp_path / "out",
                             formats=("ome.tif", "seq.mha", "csv"))
    assert sorted(f.name for f in files) == ["pos.csv", "us.ome.tif", "us.seq.mha"]
    assert all(f.stat().st_size > 0 for f in files)
    with pytest.raises(ExportError, match="unknown export format"):
        export_recording(recording["path"], tmp_path / "out", formats=("avi",))


def test_export_errors_name_the_problem(recording, tmp_path):
    with pytest.raises(ExportError, match="holds samples"):
        export_ome_tiff(recording["path"], "pos", tmp_path / "x.ome.tif")
    with pytest.raises(ExportError, match="holds frames"):
        export_tracks_csv(recording["path"], "us", tmp_path / "x.csv")
    with pytest.raises(FormatError, match="missing.h5"):
        export_recording(tmp_path / "missing.h5", tmp_path / "out")
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ExportError, match="pos.csv"):
        export_tracks_csv(recording["path"], "pos", blocked / "pos.csv")


def test_pixel_size_is_read_from_every_meta_convention():
    assert pixel_size_um({"pixel_size_um": [0.1, 0.2]}) == [0.1, 0.2]
    assert pixel_size_um({"pixel_size_um": 0.5}) == [0.5, 0.5]
    assert pixel_size_um({"pixel_mm": 0.12}) == [120.0, 120.0]
    assert pixel_size_um({"pixel_nm": 100.0}) == [0.1, 0.1]
    assert pixel_size_um({}) is None
    assert pixel_size_um({"pixel_size_um": [0.0, 1.0]}) is None
