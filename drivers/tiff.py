"""TIFF, OME-TIFF and ImageJ stacks through tifffile: `tiff:stack.tif?rate=20&speed=1&loop=0`.

The first series of the file is a stream of frames: Y and X are the image, C and S
(samples, e.g. RGB) the channels, and every other axis (T, Z, Q, I, ...) is flattened
into time in file order. So (T, H, W) gives frames (1, H, W) and (T, C, H, W) frames
(C, H, W). Values are the stored ones as float32, unscaled (photon counts stay
counts; exact for integers below 2**24).

What is refused, as one SourceError naming the file and the problem: samples that are
not integers or floats (complex, bool), data without Y and X axes (1-D), more than one
unnamed axis (tifffile's Q) longer than 1 besides Y, X and the channels (a 5-D array
saved without axis names: which axis is time is a guess; write OME-TIFF or ImageJ
axes such as TZCYX), both at open; and a frame holding NaN or infinite values, when it
is read. A frame that cannot be read is skipped: the next read() goes on with the next
one (its index shows the gap), so a reader that carries on after the error moves on.

Uncompressed contiguous data are memory-mapped (tifffile.memmap): opening costs
nothing and a frame reads only its own bytes. Other files (compressed, tiled,
scattered) are read page by page as frames are needed.

Timing: `rate=` (frames per second), else the file's own (OME TimeIncrement,
ImageJ finterval or fps), else unknown: rate_hz = 0, t counts frames, no pacing.
Pixel size: OME PhysicalSizeY/X, else ImageJ unit + resolution, else resolution tags
in cm or inch; meta["pixel_size_um"] = [y, x] in micrometres, absent when unknown.
"""

from __future__ import annotations

import logging
import math
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile

from drivers.base import Frame, Pacer, SourceBase, SourceInfo, check_pacing
from drivers.errors import SourceEnded, SourceError
from drivers.uri import ParsedURI

_CHANNEL_AXES = "CS"
_UNNAMED_AXES = "Q"  # tifffile's axis code for a dimension the file does not name
# what tifffile logs (and then works around) when a file's structure is damaged
_DAMAGE_SIGNS = ("invalid page offset", "corrupt", "truncated", "failed to reshape")
_UM_PER_UNIT = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0,
    "microns": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "pm": 1e-6, "å": 1e-4, "angstrom": 1e-4,
}
_S_PER_UNIT = {"s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}


def _um(value: float, unit: str | None) -> float | None:
    factor = _UM_PER_UNIT.get((unit or "µm").strip().lower())
    if factor is None or not (value > 0 and math.isfinite(value)):
        return None
    return value * factor


def _ome_pixels(xml: str) -> dict[str, str]:
    """Attributes of the first OME Pixels element (namespace ignored), {} if none."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":
            return dict(el.attrib)
    return {}


def _resolution_um(page: tifffile.TiffPage, unit_um: float | None) -> list[float] | None:
    """[y, x] pixel size from the X/YResolution tags (pixels per unit), or None."""
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    if unit_um is None:
        resunit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 2
        unit_um = {2: 25400.0, 3: 10000.0}.get(int(resunit))
        if unit_um is None:
            return None
    sizes = []
    for name in ("YResolution", "XResolution"):
        num, den = tags[name].value
        if num <= 0 or den <= 0:
            return None
        sizes.append(unit_um * den / num)
    return sizes


def stack_metadata(tif: tifffile.TiffFile) -> dict:
    """pixel_size_um ([y, x]) and frame_interval_s found in the file, each only when known."""
    out: dict = {}
    if tif.is_ome and tif.ome_metadata:
        px = _ome_pixels(tif.ome_metadata)
        sizes = []
        for axis in ("Y", "X"):
            try:
                sizes.append(_um(float(px[f"PhysicalSize{axis}"]),
                                 px.get(f"PhysicalSize{axis}Unit")))
            except (KeyError, ValueError):
                sizes.append(None)
        if None not in sizes:
            out["pixel_size_um"] = sizes
        try:
            dt = float(px["TimeIncrement"]) * _S_PER_UNIT[px.get("TimeIncrementUnit", "s")]
            if dt > 0 and math.isfinite(dt):
                out["frame_interval_s"] = dt
        except (KeyError, ValueError):
            pass
    elif tif.is_imagej and tif.imagej_metadata:
        ij = tif.imagej_metadata
        unit_um = _UM_PER_UNIT.get(str(ij.get("unit", "")).strip().lower())
        if unit_um is not None:
            sizes = _resolution_um(tif.pages.first, unit_um)
            if sizes:
                out["pixel_size_um"] = sizes
        dt = float(ij.get("finterval", 0) or 0) or (1.0 / float(ij["fps"]) if ij.get("fps")
                                                      else 0.0)
        if dt > 0 and math.isfinite(dt):
            out["frame_interval_s"] = dt
    if "pixel_size_um" not in out and not tif.is_imagej:
        sizes = _resolution_um(tif.pages.first, None)
        if sizes:
            out["pixel_size_um"] = sizes
    return out


class _TiffWarnings(logging.Handler):
    """Collects tifffile's warnings while attached (it logs damage instead of raising)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._logger = logging.getLogger("tifffile")

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _TiffWarnings:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)

    def damage(self) -> str | None:
        """The first message that says the file is damaged, or None."""
        return next((m for m in self.messages if any(s in m for s in _DAMAGE_SIGNS)), None)


class _Layout:
    """Where frame k lives in a series of axes `axes` and shape `shape`."""

    def __init__(self, axes: str, shape: tuple[int, ...]) -> None:
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"it holds {len(shape)}-D data (axes {axes!r}, shape {shape}) "
                             "without Y and X image axes")
        unnamed = [n for a, n in zip(axes, shape, strict=True) if a in _UNNAMED_AXES and n > 1]
        if len(unnamed) > 1:
            raise ValueError(f"its axes {axes!r} (shape {shape}) have {len(unnamed)} unnamed "
                             "axes longer than 1, so which one is time is ambiguous; save it "
                             "as OME-TIFF or ImageJ with named axes (e.g. TZCYX)")
        self.axes, self.shape = axes, shape
        self.time = [i for i, a in enumerate(axes) if a not in "YX" + _CHANNEL_AXES]
        self.n_frames = math.prod(shape[i] for i in self.time)
        keep = [i for i, a in enumerate(axes) if a in _CHANNEL_AXES] + [axes.index("Y"),
                                                                          axes.index("X")]
        # order of the kept axes after indexing out the time axes, then the permutation
        remaining = [i for i in range(len(axes)) if i not in self.time]
        self.perm = [remaining.index(i) for i in keep]
        h, w = shape[axes.index("Y")], shape[axes.index("X")]
        self.frame_shape = (math.prod(shape[i] for i in keep[:-2]), h, w)

    def index(self, k: int) -> tuple:
        """Index of frame k into an array of the series' shape."""
        coords = np.unravel_index(k, [self.shape[i] for i in self.time]) if self.time else ()
        idx: list = [slice(None)] * len(self.shape)
        for i, c in zip(self.time, coords, strict=True):
            idx[i] = int(c)
        return tuple(idx)

    def to_frame(self, sub: np.ndarray) -> np.ndarray:
        """A new float32 (C, H, W) array from the series indexed by `index(k)`."""
        return np.transpose(sub, self.perm).reshape(self.frame_shape).astype(np.float32)


class _PageReader:
    """Frame k of a series that cannot be memory-mapped, decoded from its own pages only."""

    def __init__(self, series: tifffile.TiffPageSeries, layout: _Layout) -> None:
        self.pages = series.pages
        first = series.keyframe
        page_size = math.prod(first.shape)
        # the series' shape in C order is (pages..., page): find where the page part starts
        split, tail = len(layout.shape), 1
        while split > 0 and tail < page_size:
            split -= 1
            tail *= layout.shape[split]
        if tail != page_size or any(i >= split for i in layout.time):
            raise ValueError(f"pages of shape {first.shape} do not tile the series "
                             f"{layout.axes} {layout.shape} frame by frame")
        self.grid = np.arange(math.prod(layout.shape[:split])).reshape(layout.shape[:split])
        self.split = split

    def read(self, layout: _Layout, k: int) -> np.ndarray:
        ids = self.grid[layout.index(k)[: self.split]]
        pages = [np.asarray(self.pages[int(j)].asarray()) for j in ids.ravel()]
        data = np.stack(pages).reshape(*ids.shape, *layout.shape[self.split:])
        return layout.to_frame(data)


class TiffSource(SourceBase):
    """Frames of a TIFF stack; see the module docstring. open() reads the header only."""

    def __init__(self, path: str | Path, *, rate: float | None = None, speed: float = 1.0,
                 loop: bool = False, uri: str | None = None) -> None:
        self.path = Path(path)
        self.uri = uri or f"tiff:{path}"
        check_pacing(self.uri, speed, rate)
        self.rate, self.speed, self.loop = rate, speed, loop
        self._tif: tifffile.TiffFile | None = None
        self._mm: np.memmap | None = None
        self._next: Frame | None = None

    @property
    def memmapped(self) -> bool:
        return self._mm is not None

    def open(self) -> None:
        self.close()
        if not self.path.is_file():
            raise SourceError(f"{self.uri}: TIFF file {self.path} not found")
        with _TiffWarnings() as warnings:
            try:
                tif = tifffile.TiffFile(self.path)
            except Exception as e:  # tifffile raises TiffFileError, ValueError, struct.error...
                raise SourceError(f"{self.uri}: {self.path} is not a readable TIFF ({e})") from None
            try:
                len(tif.pages)  # walks every page header: a cut file shows here
                series = tif.series[0]
                if series.dtype.kind not in "uif":
                    raise ValueError(f"its samples are {series.dtype}, not integers or floats")
                layout = _Layout(series.axes, tuple(series.shape))
                meta = stack_metadata(tif)
                try:
                    self._mm = tifffile.memmap(self.path, series=0, mode="r")
                    self._pages = None
                except ValueError:  # compressed, tiled or not contiguous
                    self._pages = _PageReader(series, layout)
                dtype = str(series.dtype)
                self._float = series.dtype.kind == "f"
                damage = warnings.damage()
                if damage:
                    raise ValueError(f"damaged or truncated file: {damage}")
            except Exception as e:
                tif.close()
                self._mm = None
                raise SourceError(f"{self.uri}: cannot read {self.path} as a stack ({e})"
                                  ) from None
        if layout.n_frames == 0:
            tif.close()
            raise SourceError(f"{self.uri}: {self.path} holds no frames")
        self._tif, self._layout, self._k = tif, layout, 0
        dt = meta.get("frame_interval_s")
        self._rate = self.rate or (1.0 / dt if dt else 0.0)
        self._pacer = Pacer(self._rate, self.speed)
        meta.update({
            "device": "tiff file",
            "path": str(self.path.resolve()),
            "format": "ome" if tif.is_ome else "imagej" if tif.is_imagej else "tiff",
            "axes": layout.axes,
            "file_shape": list(layout.shape),
            "dtype": dtype,
            "n_frames": layout.n_frames,
            "memmapped": self.memmapped,
            "rate_source": "uri" if self.rate else "file" if dt else "unknown",
            "speed": self.speed,
            "loop": self.loop,
        })
        self._info = SourceInfo(uri=self.uri, kind="frames", shape=layout.frame_shape,
                                rate_hz=self._rate, meta=meta)

    @property
    def n_frames(self) -> int:
        return self.info.meta["n_frames"]

    def frame_data(self, i: int) -> np.ndarray:
        """A new float32 (C, H, W) array of stack frame i (0 <= i < n_frames).

        SourceError naming the file and the frame if it cannot be decoded or holds NaN or
        infinite values.
        """
        try:
            if self._mm is not None:
                data = self._layout.to_frame(self._mm[self._layout.index(i)])
            else:
                data = self._pages.read(self._layout, i)
        except Exception as e:  # decoding errors of a damaged file
            raise SourceError(f"{self.uri}: frame {i} of {self.path} is unreadable ({e})") from None
        # the sum is finite unless a value is NaN or infinite (or it overflowed: look closer)
        if self._float and not math.isfinite(data.sum()) and not np.isfinite(data).all():
            raise SourceError(f"{self.uri}: frame {i} of {self.path} holds "
                              f"{np.isnan(data).sum()} NaN and {np.isinf(data).sum()} "
                              "infinite values")
        return data

    def read(self, timeout: float = 0.1) -> Frame | None:
        if self._tif is None:
            raise SourceError(f"{self.uri}: source is not open")
        if self._next is None:
            k, n = self._k, self._layout.n_frames
            if k >= n and not self.loop:
                raise SourceEnded(f"{self.uri}: ended after {n} frames")
            try:
                data = self.frame_data(k % n)
            except SourceError:
                self._k += 1  # skip it: a reader that goes on gets the next frame
                raise
            self._next = Frame(k, k / self._rate if self._rate else float(k), data)
        if not self._pacer.wait(self._next.index, timeout):
            return None
        frame, self._next = self._next, None
        self._k += 1
        frame.t_host = time.monotonic()
        return frame

    def close(self) -> None:
        if self._tif is not None:
            self._tif.close()
        self._tif, self._mm, self._next = None, None, None  # the map closes with its last view


def source_from_uri(parsed: ParsedURI) -> TiffSource:
    """`tiff:PATH?rate=20&speed=1&loop=0` (rate overrides the file's frame interval)."""
    parsed.check_known({"rate", "speed", "loop"})
    if not parsed.target:
        raise SourceError(f"{parsed.uri}: no file given (tiff:PATH)")
    return TiffSource(parsed.target, rate=parsed.get("rate", None, float),
                      speed=parsed.get("speed", 1.0, float), loop=parsed.get("loop", False, bool),
                      uri=parsed.uri)
