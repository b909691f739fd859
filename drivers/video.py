"""Video files through OpenCV: `video:clip.mp4?speed=1&loop=1&size=128&iq=1`.

Frame k has t = k / fps, fps from the container (or `rate=` when the container has
none or lies), and is released on that timeline times `speed` (0: as fast as it
decodes). Frames are float32 gray (1, H, W) scaled to [0, 1] (uint8 / 255, uint16 /
65535); `color=1` gives RGB (3, H, W).

How an image feeds the imaging engines the way `sim:ceus` does: `size=128` resizes
to 128 x 128 (`size=96x128` to H x W; INTER_AREA), and `iq=1` makes the frame
(2, H, W) with the gray image in I and zeros in Q. A CEUS engine then treats the
video as a real-valued (zero-phase) RF envelope: the SVD clutter filter and RPCA
separate its slow (tissue-like) and fast (moving) parts exactly as for I/Q, which
is what a B-mode or microscopy clip offers. The same FrameFormat serves the camera.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from drivers.base import Frame, Pacer, SourceBase, SourceInfo, check_pacing
from drivers.errors import SourceEnded, SourceError
from drivers.uri import ParsedURI

FORMAT_PARAMS = {"color", "iq", "size"}


@dataclass(frozen=True, slots=True)
class FrameFormat:
    """How a decoded OpenCV image (H, W), (H, W, 3) BGR or (H, W, 4) BGRA becomes Frame.data.

    color: RGB (3, H, W) instead of gray (1, H, W); iq: gray in channel 0 (I), zeros
    in channel 1 (Q); size: (H, W) to resize to, None to keep the source's size.
    """

    color: bool = False
    iq: bool = False
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.color and self.iq:
            raise ValueError("color=1 and iq=1 exclude each other (iq carries one gray image)")
        if self.size is not None and min(self.size) < 1:
            raise ValueError(f"size must be positive, got {self.size}")

    @property
    def channels(self) -> list[str]:
        return ["R", "G", "B"] if self.color else ["I", "Q"] if self.iq else ["gray"]

    def shape(self, hw: tuple[int, int]) -> tuple[int, int, int]:
        """(C, H, W) of the frames made from images of size `hw` (H, W)."""
        h, w = self.size or hw
        return (len(self.channels), h, w)

    def convert(self, img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        """A new float32 (C, H, W) array from `img`, resized to `hw` when it differs."""
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim != 2 and not (img.ndim == 3 and img.shape[2] in (3, 4)):
            raise ValueError(f"unsupported image shape {img.shape}")
        if img.shape[:2] != hw:
            img = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        scale = np.float32(1.0 / np.iinfo(img.dtype).max if img.dtype.kind in "ui" else 1.0)
        out = np.empty(self.shape(hw), np.float32)
        if self.color:
            if img.ndim == 2:
                out[:] = img
            else:  # BGR(A) -> RGB planes
                out[0], out[1], out[2] = img[:, :, 2], img[:, :, 1], img[:, :, 0]
        else:
            if img.ndim == 3:
                code = cv2.COLOR_BGR2GRAY if img.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
                img = cv2.cvtColor(img, code)
            out[0] = img
            if self.iq:
                out[1] = 0.0
        out *= scale
        return out


def _parse_size(parsed: ParsedURI) -> tuple[int, int] | None:
    raw = parsed.params.get("size")
    if raw is None:
        return None
    h, _, w = raw.lower().partition("x")
    try:
        size = (int(h), int(w or h))
    except ValueError:
        raise SourceError(f"{parsed.uri}: parameter size={raw!r} is not N or HxW") from None
    if min(size) < 1:
        raise SourceError(f"{parsed.uri}: size must be positive, got {raw!r}")
    return size


def frame_format_from_uri(parsed: ParsedURI) -> FrameFormat:
    """The FrameFormat of `color`, `iq` and `size` (N or HxW) in a URI."""
    try:
        return FrameFormat(color=parsed.get("color", False, bool), iq=parsed.get("iq", False, bool),
                           size=_parse_size(parsed))
    except ValueError as e:
        raise SourceError(f"{parsed.uri}: {e}") from None


def fourcc_text(code: float) -> str:
    """The four characters of an OpenCV FOURCC code, or "" when it is not text."""
    c = int(code)
    text = "".join(chr((c >> 8 * i) & 0xFF) for i in range(4))
    return text if text.isprintable() else ""


class VideoSource(SourceBase):
    """Frames of a video file, paced at fps x speed; see the module docstring.

    open() decodes the first frame (so a file with no decodable frame fails there,
    with a SourceError naming it); read() decodes frame k before waiting for its
    deadline. At the end: SourceEnded, or with loop the file starts again while
    index and t go on. Threading: one acquisition thread calls read().
    """

    def __init__(self, path: str | Path, *, speed: float = 1.0, loop: bool = False,
                 rate: float | None = None, fmt: FrameFormat | None = None,
                 uri: str | None = None) -> None:
        self.path = Path(path)
        self.uri = uri or f"video:{path}"
        check_pacing(self.uri, speed, rate)
        self.speed, self.loop, self.rate = speed, loop, rate
        self.fmt = fmt or FrameFormat()
        self._cap: cv2.VideoCapture | None = None
        self._next: Frame | None = None

    def _capture(self) -> cv2.VideoCapture:
        if not self.path.is_file():
            raise SourceError(f"{self.uri}: video file {self.path} not found")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.uri}: cannot open {self.path}: not a video OpenCV can "
                              "decode (corrupt, truncated or unsupported codec)")
        return cap

    def open(self) -> None:
        self.close()
        cap = self._capture()
        fps = self.rate or cap.get(cv2.CAP_PROP_FPS)
        if not (fps > 0 and math.isfinite(fps)):
            cap.release()
            raise SourceError(f"{self.uri}: {self.path} has no frame rate; give one with rate=")
        ok, img = cap.read()
        if not ok:
            cap.release()
            raise SourceError(f"{self.uri}: {self.path} has no decodable frame (corrupt?)")
        self._cap, self._fps, self._k = cap, fps, 0
        self._hw = self.fmt.size or img.shape[:2]
        self._next = self._frame(0, img)
        self._pacer = Pacer(fps, self.speed)
        self._info = SourceInfo(
            uri=self.uri, kind="frames", shape=self.fmt.shape(self._hw), rate_hz=fps,
            meta={
                "device": "video file",
                "path": str(self.path.resolve()),
                "codec": fourcc_text(cap.get(cv2.CAP_PROP_FOURCC)),
                "container_fps": cap.get(cv2.CAP_PROP_FPS),
                "n_frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),  # the container's claim
                "source_size": list(img.shape[:2]),
                "channels": self.fmt.channels,
                "value_range": [0.0, 1.0],
                "speed": self.speed,
                "loop": self.loop,
            },
        )

    def _frame(self, k: int, img: np.ndarray) -> Frame:
        try:
            data = self.fmt.convert(img, self._hw)
        except ValueError as e:
            raise SourceError(f"{self.uri}: frame {k} of {self.path}: {e}") from None
        return Frame(k, k / self._fps, data)

    def _decode(self) -> Frame:
        k = self._k + 1
        ok, img = self._cap.read()
        if not ok and self.loop:
            self._cap.release()
            self._cap = self._capture()
            ok, img = self._cap.read()
            if not ok:
                raise SourceError(f"{self.uri}: {self.path} has no decodable frame on looping")
        if not ok:
            raise SourceEnded(f"{self.uri}: ended after {k} frames")
        self._k = k
        return self._frame(k, img)

    def read(self, timeout: float = 0.1) -> Frame | None:
        if self._cap is None:
            raise SourceError(f"{self.uri}: source is not open")
        if self._next is None:
            self._next = self._decode()
        if not self._pacer.wait(self._next.index, timeout):
            return None
        frame, self._next = self._next, None
        frame.t_host = time.monotonic()
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
        self._cap, self._next = None, None


def source_from_uri(parsed: ParsedURI) -> VideoSource:
    """`video:PATH?speed=1&loop=0&rate=&color=0&iq=0&size=` (rate overrides the container's fps)."""
    parsed.check_known({"speed", "loop", "rate"} | FORMAT_PARAMS)
    if not parsed.target:
        raise SourceError(f"{parsed.uri}: no file given (video:PATH)")
    return VideoSource(parsed.target, speed=parsed.get("speed", 1.0, float),
                       loop=parsed.get("loop", False, bool), rate=parsed.get("rate", None, float),
                       fmt=frame_format_from_uri(parsed), uri=parsed.uri)
