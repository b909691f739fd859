"""Recordings out to other tools: frames to OME-TIFF (Fiji, napari, QuPath) or a 3D Slicer
sequence (.seq.mha), tracks to CSV (pandas, spreadsheets, MATLAB).

- `export_ome_tiff`: one frame stream as a TCYX (TYX when gray) float32 OME-TIFF;
  PhysicalSizeX/Y (micrometres) when the stream's meta knows the pixel size,
  TimeIncrement from its rate, and every frame's recorded time as its planes' DeltaT
  (seconds from the first frame). Channel names from meta["channels"] when given.
- `export_seq_mha`: one frame stream as a MetaImage sequence in the PLUS toolkit's
  layout, which Slicer's Sequences module loads: DimSize = W H T, channels
  interleaved, ElementSpacing in millimetres, Seq_FrameNNNN_Timestamp per frame.
- `export_tracks_csv`: one sample stream as CSV, one row per sample: index, t,
  t_host, value_j, truth_<key>_j, and for every engine that ran on the stream
  <engine>_j (its output, flattened), <engine>_var_j (the diagonal of its covariance,
  when recorded) and <engine>_latency_s, joined on the sample index (empty cells
  where the engine skipped a sample). Floats are written with repr: they read back
  exactly.

Frames are streamed one at a time, so a recording larger than memory exports.
Reading errors are the reader's FormatError; writing errors are ExportError (the
output path and the cause).
"""

from __future__ import annotations

import csv
import math
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

from drivers.errors import ExportError
from drivers.recording import RecordingReader


def pixel_size_um(meta: dict) -> list[float] | None:
    """[y, x] pixel size in micrometres from a stream's meta, or None when unknown.

    Reads meta["pixel_size_um"] ([y, x] or one number; TIFF and camera sources),
    meta["pixel_mm"] (one number; sim:ceus) or meta["pixel_nm"] (one number; sim:smlm).
    """
    if "pixel_size_um" in meta:
        size = meta["pixel_size_um"]
    elif "pixel_mm" in meta:
        size = np.asarray(meta["pixel_mm"], dtype=float) * 1000.0
    elif "pixel_nm" in meta:
        size = np.asarray(meta["pixel_nm"], dtype=float) / 1000.0
    else:
        return None
    yx = np.broadcast_to(np.asarray(size, dtype=float), (2,))
    return [float(v) for v in yx] if np.all(yx > 0) and np.all(np.isfinite(yx)) else None


def _frame_stream(rec: RecordingReader, stream: str):
    info = rec.info(stream)
    if info.kind != "frames":
        raise ExportError(f"{rec.path}: stream {stream!r} holds {info.kind}, not frames")
    n = rec.n_items(stream)
    if n == 0:
        raise ExportError(f"{rec.path}: stream {stream!r} has no frames to export")
    return info, n


@contextmanager
def _writing(out: Path, what: str):
    """Turn OS and library errors of writing `out` into ExportError."""
    try:
        yield
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot write {what} {out}: {e}") from e


def export_ome_tiff(recording: str | os.PathLike, stream: str, out: str | os.PathLike) -> Path:
    """Write frame stream `stream` of `recording` to the OME-TIFF `out`; returns its path."""
    out = Path(out)
    with RecordingReader(recording) as rec:
        info, n = _frame_stream(rec, stream)
        C, H, W = info.shape
        t = np.empty(n)

        def planes():
            for i in range(n):
                item = rec.item(stream, i)
                t[i] = item.t
                yield from item.data

        # tifffile wants a length-1 C axis left out
        shape, axes = ((n, C, H, W), "TCYX") if C > 1 else ((n, H, W), "TYX")
        meta: dict = {"axes": axes, "Name": stream, "Description": info.uri}
        px = pixel_size_um(info.meta)
        if px:
            meta["PhysicalSizeY"], meta["PhysicalSizeX"] = px
        if info.rate_hz > 0:
            meta["TimeIncrement"], meta["TimeIncrementUnit"] = 1.0 / info.rate_hz, "s"
        names = info.meta.get("channels")
        if isinstance(names, list) and len(names) == C:
            meta["Channel"] = {"Name": [str(c) for c in names]}
        with _writing(out, "OME-TIFF"):
            tifffile.imwrite(out, planes(), shape=shape, dtype=np.float32, ome=True,
                             photometric="minisblack", bigtiff=n * C * H * W * 4 > 2**31,
                             metadata=meta)
            # every frame's recorded time as DeltaT: known only once all frames are read
            dt = t - t[0]
            plane_xml = "".join(
                f'<Plane TheC="{c}" TheZ="0" TheT="{k}" DeltaT="{float(dt[k])!r}" DeltaTUnit="s"/>'
                for k in range(n) for c in range(C))
            xml = tifffile.tiffcomment(out)
            tifffile.tiffcomment(out, comment=xml.replace("</Pixels>", plane_xml + "</Pixels>")
                                 .encode())
    return out


def export_seq_mha(recording: str | os.PathLike, stream: str, out: str | os.PathLike) -> Path:
    """Write frame stream `stream` to the MetaImage sequence `out` (.seq.mha); returns its path."""
    out = Path(out)
    with RecordingReader(recording) as rec:
        info, n = _frame_stream(rec, stream)
        C, H, W = info.shape
        px = pixel_size_um(info.meta) or [1000.0, 1000.0]  # unknown: 1 mm, as Slicer assumes
        header = [
            "ObjectType = Image", "NDims = 3", "AnatomicalOrientation = RAI",
            "BinaryData = True", "BinaryDataByteOrderMSB = False", "CompressedData = False",
            "CenterOfRotation = 0 0 0", "Offset = 0 0 0", "TransformMatrix = 1 0 0 0 1 0 0 0 1",
            f"DimSize = {W} {H} {n}", f"ElementNumberOfChannels = {C}",
            f"ElementSpacing = {px[1] / 1000.0!r} {px[0] / 1000.0!r} 1",
            "ElementType = MET_FLOAT", "Kinds = domain domain list",
            "UltrasoundImageOrientation = MF", "UltrasoundImageType = BRIGHTNESS",
        ]
        with _writing(out, "MetaImage sequence"), open(out, "wb") as f:
            # the header precedes the data and holds every frame's time: a first pass reads t
            times = [rec.item(stream, i).t for i in range(n)]
            for k in range(n):
                header += [f"Seq_Frame{k:04d}_FrameNumber = {k}",
                           f"Seq_Frame{k:04d}_Timestamp = {float(times[k])!r}",
                           f"Seq_Frame{k:04d}_ImageStatus = OK"]
            header.append("ElementDataFile = LOCAL")
            f.write(("\n".join(header) + "\n").encode("ascii"))
            for i in range(n):
                data = rec.item(stream, i).data  # (C, H, W) -> pixels with channels interleaved
                f.write(np.ascontiguousarray(data.transpose(1, 2, 0), dtype="<f4").tobytes())
    return out


def _columns(prefix: str, row_shape: tuple[int, ...]) -> list[str]:
    return [f"{prefix}_{j}" for j in range(math.prod(row_shape))]


def export_tracks_csv(recording: str | os.PathLike, stream: str, out: str | os.PathLike) -> Path:
    """Write sample stream `stream` with its truth and every engine's results to CSV `out`."""
    out = Path(out)
    with RecordingReader(recording) as rec:
        info = rec.info(stream)
        if info.kind != "samples":
            raise ExportError(f"{rec.path}: stream {stream!r} holds {info.kind}, not samples")
        a = rec.arrays(stream)
        n = len(a["index"])
        header = ["index", "t", "t_host"] + _columns("value", info.shape)
        blocks = [a["t"][:, None], a["t_host"][:, None], a["data"].reshape(n, -1)]
        for key, shape in info.truth_shapes.items():
            header += _columns(f"truth_{key}", shape)
            blocks.append(a[f"truth/{key}"].reshape(n, -1))
        samples = np.concatenate(blocks, axis=1)
        # engine columns, joined on the sample index: (values (n, k), present (n,)) each
        row_of = {int(k): i for i, k in enumerate(a["index"])}
        engines = []
        for s, engine in rec.results:
            if s != stream:
                continue
            r = rec.result_arrays(stream, engine)
            m = len(r["index"])
            cols = [r["data"].reshape(m, -1)]
            header += _columns(engine, cols[0].shape[1:])
            if "cov" in r:
                cov = r["cov"].reshape(m, *r["cov"].shape[-2:])
                cols.append(np.diagonal(cov, axis1=-2, axis2=-1))
                header += _columns(f"{engine}_var", cols[-1].shape[1:])
            cols.append(r["latency"][:, None])
            header.append(f"{engine}_latency_s")
            values = np.concatenate(cols, axis=1)
            joined = np.zeros((n, values.shape[1]))
            present = np.zeros(n, dtype=bool)
            for k, v in zip(r["index"], values, strict=True):
                i = row_of.get(int(k))
                if i is not None:
                    joined[i], present[i] = v, True
            engines.append((joined, present))
        with _writing(out, "CSV"), open(out, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in range(n):
                row = [int(a["index"][i]), *map(repr, samples[i].tolist())]
                for joined, present in engines:
                    row += map(repr, joined[i].tolist()) if present[i] else [""] * joined.shape[1]
                w.writerow(row)
    return out


def export_recording(recording: str | os.PathLike, out_dir: str | os.PathLike,
                     formats: tuple[str, ...] = ("ome.tif", "csv")) -> list[Path]:
    """Export every stream: frame streams to `<stream>.ome.tif` (and `<stream>.seq.mha` when
    "seq.mha" is in formats), sample streams to `<stream>.csv`. Returns the files written."""
    known = {"ome.tif", "seq.mha", "csv"}
    if not set(formats) <= known:
        raise ExportError(f"unknown export format(s) {sorted(set(formats) - known)}; "
                          f"known: {sorted(known)}")
    out_dir = Path(out_dir)
    with _writing(out_dir, "export folder"):
        out_dir.mkdir(parents=True, exist_ok=True)
    with RecordingReader(recording) as rec:
        kinds = {s: rec.info(s).kind for s in rec.streams}
        counts = {s: rec.n_items(s) for s in rec.streams}
    written = []
    for stream, kind in kinds.items():
        if kind == "frames" and counts[stream]:
            if "ome.tif" in formats:
                written.append(export_ome_tiff(recording, stream, out_dir / f"{stream}.ome.tif"))
            if "seq.mha" in formats:
                written.append(export_seq_mha(recording, stream, out_dir / f"{stream}.seq.mha"))
        elif kind == "samples" and "csv" in formats:
            written.append(export_tracks_csv(recording, stream, out_dir / f"{stream}.csv"))
    return written
