"""Cameras through OpenCV: `camera:0`, `camera:/dev/video0?width=640&height=480&fps=30&fourcc=MJPG`.

Linux uses the V4L2 backend for an index or a /dev path; any other target (a stream
URL, a file) goes to OpenCV's default backends, which is also how the tests drive
this code without a camera. Frames are float32 gray (1, H, W) in [0, 1] by default,
made by video.FrameFormat (`color=1`, `iq=1`, `size=N|HxW` as for video files).

Timestamps: `t` is the device's buffer timestamp (CAP_PROP_POS_MSEC; V4L2 stamps
buffers with CLOCK_MONOTONIC, the clock of time.monotonic on Linux) when the backend
gives one for the first frame, else time.monotonic() at the grab; meta["clock"] says
which. `t_host` is always time.monotonic() right after the grab.

A grab thread owns the VideoCapture, so read(timeout) never blocks longer than its
timeout, even while a driver call hangs or the camera is being reconnected. Frames
wait in a queue of about one second; when the consumer falls further behind, the
oldest are dropped and counted in `dropped`. A failed grab (unplug, driver error)
closes the device and reaches read() as ONE SourceError naming the device; the
thread then reopens it with exponential backoff (0.1 s doubling to 5 s) and the
stream goes on, index still increasing. Frames keep the shape fixed at open: a
camera that comes back at another resolution is resized to it.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import sys
import threading
import time

import cv2
import numpy as np

from drivers.base import Frame, SourceBase, SourceInfo
from drivers.errors import SourceError
from drivers.uri import ParsedURI
from drivers.video import FORMAT_PARAMS, FrameFormat, fourcc_text, frame_format_from_uri

log = logging.getLogger(__name__)

BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0


def _backend(device: int | str) -> int:
    linux = sys.platform.startswith("linux")
    if linux and (isinstance(device, int) or device.startswith("/dev/")):
        return cv2.CAP_V4L2
    return cv2.CAP_ANY


class CameraSource(SourceBase):
    """Frames from a camera; see the module docstring for timing, faults and reconnection.

    width, height, fps, fourcc (e.g. "MJPG", "YUYV") are requests: the camera may pick
    other values, and meta records what it granted. open() connects, grabs the first
    frame (fixing the shape) and starts the grab thread; it raises SourceError naming
    the device when either fails. read() is called from one acquisition thread.
    """

    def __init__(self, device: int | str, *, width: int | None = None,
                 height: int | None = None, fps: float | None = None,
                 fourcc: str | None = None, fmt: FrameFormat | None = None,
                 uri: str | None = None) -> None:
        self.device = device
        self.uri = uri or f"camera:{device}"
        if fourcc is not None and len(fourcc) != 4:
            raise SourceError(f"{self.uri}: fourcc must be 4 characters, got {fourcc!r}")
        for name, v in (("width", width), ("height", height), ("fps", fps)):
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise SourceError(f"{self.uri}: {name} must be > 0, got {v}")
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self.fmt = fmt or FrameFormat()
        self.dropped = 0
        self.reconnects = 0
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _connect(self) -> cv2.VideoCapture:
        dev = self.device
        if isinstance(dev, str) and dev.startswith("/dev/") and not os.path.exists(dev):
            raise SourceError(f"{self.uri}: camera {dev} not found (unplugged?)")
        cap = cv2.VideoCapture(dev, _backend(dev))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.uri}: cannot open camera {dev} (missing, busy or no "
                              "permission)")
        # V4L2 applies the pixel format before the size, and the size before the rate
        if self.fourcc:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*self.fourcc))
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        return cap

    def open(self) -> None:
        self.close()
        cap = self._connect()
        try:
            ok, img = cap.read()
        except cv2.error as e:
            ok, img = False, str(e)
        if not ok:
            cap.release()
            raise SourceError(f"{self.uri}: camera {self.device} opened but gave no frame "
                              f"({img if isinstance(img, str) else 'grab failed'})")
        t_host = time.monotonic()
        device_ms = cap.get(cv2.CAP_PROP_POS_MSEC)
        self._clock = "device" if device_ms > 0 else "host"
        self._hw = self.fmt.size or img.shape[:2]
        fps = cap.get(cv2.CAP_PROP_FPS)
        rate = fps if fps > 0 and math.isfinite(fps) else 0.0
        self._queue = queue.Queue(maxsize=max(4, min(240, round(rate or 30))))
        self._stop = threading.Event()
        self.dropped = self.reconnects = 0
        self._info = SourceInfo(
            uri=self.uri, kind="frames", shape=self.fmt.shape(self._hw), rate_hz=rate,
            meta={
                "device": f"camera {self.device}",
                "backend": cap.getBackendName(),
                "clock": self._clock,
                "requested": {"width": self.width, "height": self.height, "fps": self.fps,
                              "fourcc": self.fourcc},
                "granted": {"width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), "fps": rate,
                            "fourcc": fourcc_text(cap.get(cv2.CAP_PROP_FOURCC))},
                "source_size": list(img.shape[:2]),
                "channels": self.fmt.channels,
                "value_range": [0.0, 1.0],
            },
        )
        try:
            first = self._frame(0, img, device_ms, t_host)
        except ValueError as e:
            cap.release()
            raise SourceError(f"{self.uri}: camera {self.device}: {e}") from None
        self._put(first)
        self._thread = threading.Thread(target=self._grab_loop, args=(cap,),
                                        name=f"grab {self.uri}", daemon=True)
        self._thread.start()

    def _frame(self, k: int, img: np.ndarray, device_ms: float, t_host: float) -> Frame:
        t = device_ms / 1000.0 if self._clock == "device" else t_host
        return Frame(k, t, self.fmt.convert(img, self._hw), t_host=t_host)

    def _put(self, item: Frame | SourceError) -> None:
        """Queue an item; when full, drop the oldest (a frame the consumer is too late for)."""
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass

    def _grab_loop(self, cap: cv2.VideoCapture) -> None:
        """The grab thread's body; a bug in it reaches read() as a SourceError, not silence."""
        try:
            self._grab(cap)
        except Exception as e:
            log.exception("%s: grab thread failed", self.uri)
            self._put(SourceError(f"{self.uri}: grab thread of camera {self.device} failed "
                                  f"({type(e).__name__}: {e})"))

    def _grab(self, cap: cv2.VideoCapture | None) -> None:
        """Grab, convert, queue; on a failure report once and reconnect with backoff."""
        k, backoff = 1, BACKOFF_MIN_S
        while not self._stop.is_set():
            if cap is None:
                if self._stop.wait(backoff):
                    break
                try:
                    cap = self._connect()
                except SourceError as e:
                    backoff = min(2 * backoff, BACKOFF_MAX_S)
                    log.debug("%s; next try in %.1f s", e, backoff)
                    continue
                self.reconnects += 1
                log.info("%s: camera %s reconnected", self.uri, self.device)
            try:
                ok, img = cap.read()
                cause = "grab failed"
            except cv2.error as e:
                ok, cause = False, str(e).strip()
            if not ok:
                cap.release()
                cap, backoff = None, BACKOFF_MIN_S
                if not self._stop.is_set():
                    self._put(SourceError(f"{self.uri}: camera {self.device} stopped delivering "
                                          f"frames ({cause}; unplugged?); reconnecting"))
                continue
            t_host = time.monotonic()
            try:
                frame = self._frame(k, img, cap.get(cv2.CAP_PROP_POS_MSEC), t_host)
            except ValueError as e:
                self._put(SourceError(f"{self.uri}: frame {k} of camera {self.device}: {e}"))
                continue
            self._put(frame)
            k += 1
        if cap is not None:
            cap.release()

    def read(self, timeout: float = 0.1) -> Frame | None:
        """The oldest queued frame, or None after `timeout`; SourceError once per failure."""
        if self._thread is None:
            raise SourceError(f"{self.uri}: source is not open")
        try:
            item = self._queue.get(timeout=max(timeout, 0.0)) if timeout > 0 else \
                self._queue.get_nowait()
        except queue.Empty:
            if not self._thread.is_alive():
                raise SourceError(f"{self.uri}: the grab thread of camera {self.device} "
                                  "has stopped") from None
            return None
        if isinstance(item, SourceError):
            raise item
        return item

    def close(self) -> None:
        """Stop the grab thread (it releases the device); waits up to 2 s for a hung grab."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            if self._thread.is_alive():
                log.warning("%s: grab thread still blocked in the driver after 2 s", self.uri)
            self._thread = None


def source_from_uri(parsed: ParsedURI) -> CameraSource:
    """`camera:0` or `camera:/dev/video0?width=&height=&fps=&fourcc=MJPG&color=0&iq=0&size=`."""
    parsed.check_known({"width", "height", "fps", "fourcc"} | FORMAT_PARAMS)
    target = parsed.target.strip()
    if not target:
        raise SourceError(f"{parsed.uri}: no camera given (camera:0 or camera:/dev/video0)")
    device: int | str = int(target) if target.isdigit() else target
    return CameraSource(device, width=parsed.get("width", None, int),
                        height=parsed.get("height", None, int),
                        fps=parsed.get("fps", None, float), fourcc=parsed.get("fourcc", None),
                        fmt=frame_format_from_uri(parsed), uri=parsed.uri)
