"""Micro-Manager cameras through pymmcore-plus: `mmcore:/path/MMConfig.cfg?exposure=10&roi=x,y,w,h`.

A user's Micro-Manager configuration is loaded into a pymmcore-plus `UniMMCore` (a
CMMCorePlus that also runs pure-Python devices named by `#py pyDevice,...` lines), and
the camera streams in continuous sequence acquisition: the core's acquisition thread
fills its circular buffer and `read()` pops the OLDEST image, so the engines and the
recorder get every frame in order and none is dropped while the buffer (hundreds of MB:
thousands of frames) absorbs a slow reader. `MMCoreSource(core=...)` takes a core the
caller has already set up (tests, demos, an app that owns the microscope) instead of
a config file; the source then never unloads its devices.

URI keys: exposure (ms), roi = x,y,w,h (camera pixels), camera (device label; default
the config's Core-Camera), stage_poll (s, default 0.1; 0 = every frame).

Frames. data float32 (C, H, W) holding the camera's values unscaled (counts; C = 1
gray, 3 for RGB cameras), the shape fixed by the ROI at open. index = the core's
ImageNumber (gaps mean lost images), counted on across restarts; t = time.monotonic()
at the sequence start + the core's ElapsedTime-ms. Each frame is an `MMFrame`: a Frame
with `meta`, a dict that is not truth: "stage_xy_um" [x, y] and "stage_z_um" (when the
config has an XY stage / a focus drive; read from the core at most every stage_poll
seconds, since a serial stage can take milliseconds to answer) and "image", the
image's Micro-Manager metadata tags (strings). rate_hz is 1000 / exposure (nominal).

Faults. Missing pymmcore-plus, a config that fails to load, an unknown camera, a
rejected exposure or ROI: one-line SourceError at open(), naming the URI and the
cause. A camera that stops acquiring (unplugged, a failed snap, a driver error) is
reported by read() as ONE SourceError naming the camera; later reads restart the
sequence with backoff (0.1 s doubling to 5 s) and the index goes on, as for camera:.

Threading: open, read and close from one acquisition thread; a hung device call blocks it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from drivers.base import Frame, SourceBase, SourceInfo
from drivers.errors import SourceError
from drivers.uri import ParsedURI

log = logging.getLogger(__name__)

POLL_S = 0.0005  # how often read() looks at the circular buffer while waiting
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.1, 5.0
INSTALL_HINT = "pip install 'mbdl-studio[microscopy]'"


@dataclass(slots=True)
class MMFrame(Frame):
    """A Frame with the device's per-frame `meta` (stage position, image tags): not truth."""

    meta: dict[str, Any] = field(default_factory=dict)


def _one_line(e: BaseException) -> str:
    """An exception as one line (Micro-Manager's messages span several)."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


class MMXYStage:
    """The core's current XY stage: position_um() -> (x, y) (getXYPosition), move_um(x, y)
    (setXYPosition, which returns once the move is sent). A device error is one SourceError naming
    the URI. Called from the thread that reads the source (the core is not shared across threads)."""

    def __init__(self, core: Any, uri: str) -> None:
        self.core, self.uri = core, uri

    def position_um(self) -> tuple[float, float]:
        try:
            x, y = self.core.getXYPosition()
        except Exception as e:
            raise SourceError(f"{self.uri}: reading the XY stage failed: {_one_line(e)}") from None
        return float(x), float(y)

    def move_um(self, x: float, y: float) -> None:
        if not (math.isfinite(x) and math.isfinite(y)):
            raise SourceError(f"{self.uri}: XY stage target must be finite, got ({x}, {y})")
        try:
            self.core.setXYPosition(float(x), float(y))
        except Exception as e:
            raise SourceError(f"{self.uri}: moving the XY stage to ({x}, {y}) failed: "
                              f"{_one_line(e)}") from None


class MMCoreSource(SourceBase):
    """Frames of a Micro-Manager camera in continuous sequence acquisition; see the module
    docstring. Give `config` (a .cfg file, loaded at open) or `core` (already set up)."""

    def __init__(self, config: str | Path | None = None, *, core: Any = None,
                 camera: str | None = None, exposure_ms: float | None = None,
                 roi: tuple[int, int, int, int] | None = None, stage_poll_s: float = 0.1,
                 uri: str | None = None) -> None:
        self.uri = uri or (f"mmcore:{config}" if config is not None else "mmcore:<core>")
        if (config is None) == (core is None):
            raise SourceError(f"{self.uri}: give a Micro-Manager config file or a core, not "
                              f"{'both' if core is not None else 'neither'}")
        if exposure_ms is not None and not (exposure_ms > 0 and math.isfinite(exposure_ms)):
            raise SourceError(f"{self.uri}: exposure must be a finite number > 0 ms, "
                              f"got {exposure_ms}")
        if roi is not None and (len(roi) != 4 or min(roi[:2]) < 0 or min(roi[2:]) <= 0):
            raise SourceError(f"{self.uri}: roi must be x,y,w,h with x, y >= 0 and w, h > 0, "
                              f"got {roi}")
        if not (stage_poll_s >= 0 and math.isfinite(stage_poll_s)):
            raise SourceError(f"{self.uri}: stage_poll must be a finite number >= 0 s, "
                              f"got {stage_poll_s}")
        self.config = None if config is None else Path(config)
        self.camera, self.exposure_ms, self.roi = camera, exposure_ms, roi
        self.stage_poll_s = stage_poll_s
        self._given_core = core
        self._core: Any = None
        self.restarts = 0

    # ------------------------------------------------------------------ open / close

    def _load_core(self) -> Any:
        """A UniMMCore with the config loaded; SourceError naming the file on failure."""
        try:
            from pymmcore_plus.experimental.unicore import UniMMCore
        except ImportError:
            raise SourceError(f"{self.uri}: pymmcore-plus is not installed ({INSTALL_HINT})"
                              ) from None
        path = self.config
        if not path.is_file():
            raise SourceError(f"{self.uri}: Micro-Manager config {path} not found")
        # This source polls the core's buffer and needs no core signals in Qt: with the GUI's
        # QApplication alive, pymmcore-plus would pick its Qt signal backend, which needs qtpy
        # (not a dependency) and fails. A user's explicit choice is kept.
        os.environ.setdefault("PYMM_SIGNALS_BACKEND", "psygnal")
        core = UniMMCore()
        try:
            core.loadSystemConfiguration(str(path))
        except Exception as e:  # RuntimeError from C++, ImportError from a #py device, ...
            raise SourceError(f"{self.uri}: Micro-Manager config {path} failed to load "
                              f"({_one_line(e)})") from None
        return core

    def open(self) -> None:
        """Load the config (or take the core), apply camera/exposure/ROI, start streaming."""
        self.close()
        core = self._given_core if self._given_core is not None else self._load_core()
        self._core = core
        try:
            self._setup(core)
        except BaseException:
            self.close()
            raise

    def _setup(self, core: Any) -> None:
        def step(what: str, call, *args) -> Any:
            try:
                return call(*args)
            except Exception as e:
                raise SourceError(f"{self.uri}: {what} failed ({_one_line(e)})") from None

        if self.camera is not None:
            cameras = step("listing cameras", self._cameras, core)
            if self.camera not in cameras:
                raise SourceError(f"{self.uri}: no camera {self.camera!r} in the configuration; "
                                  f"cameras: {', '.join(cameras) or 'none'}")
            step(f"selecting camera {self.camera!r}", core.setCameraDevice, self.camera)
        label = core.getCameraDevice()
        if not label:
            raise SourceError(f"{self.uri}: the configuration sets no camera (Core-Camera); "
                              "name one with camera=LABEL")
        self._label = label
        if self.exposure_ms is not None:
            step(f"setting exposure {self.exposure_ms} ms on camera {label!r}",
                 core.setExposure, float(self.exposure_ms))
        if self.roi is not None:
            step(f"setting roi {','.join(map(str, self.roi))} on camera {label!r}",
                 core.setROI, *map(int, self.roi))
        exposure = float(step("reading the exposure", core.getExposure))
        h, w = int(core.getImageHeight()), int(core.getImageWidth())
        channels = 1 if int(core.getNumberOfComponents()) == 1 else 3
        self._xy_stage, self._focus = core.getXYStageDevice(), core.getFocusDevice()
        pixel_um = float(core.getPixelSizeUm())
        meta: dict[str, Any] = {
            "device": f"Micro-Manager camera {label}",
            "camera": label,
            "config": None if self.config is None else str(self.config.resolve()),
            "exposure_ms": exposure,
            "roi": [int(v) for v in core.getROI()],
            "bit_depth": int(core.getImageBitDepth()),
            "units": "counts",
            "modality": "microscopy",
            "xy_stage": self._xy_stage or None,
            "focus": self._focus or None,
            "stage_poll_s": self.stage_poll_s,
            "rate_source": "exposure",
        }
        if pixel_um > 0:
            meta["pixel_size_um"] = [pixel_um, pixel_um]
            meta["pixel_nm"] = 1e3 * pixel_um
            meta["model"] = {"pixel_nm": 1e3 * pixel_um}  # engines take the camera's pixel from here
        self._info = SourceInfo(uri=self.uri, kind="frames", shape=(channels, h, w),
                                rate_hz=1000.0 / exposure if exposure > 0 else 0.0, meta=meta)
        self._next_index, self._base = 0, 0
        self._retry_at: float | None = None
        self._backoff = BACKOFF_MIN_S
        self._stage: dict[str, Any] = {}
        self._stage_t = -math.inf
        step(f"starting sequence acquisition on camera {label!r}",
             core.startContinuousSequenceAcquisition, 0.0)
        self._t_start = time.monotonic()

    @staticmethod
    def _cameras(core: Any) -> list[str]:
        from pymmcore_plus import DeviceType

        return list(core.getLoadedDevicesOfType(DeviceType.Camera))

    def xy_stage(self) -> MMXYStage:
        """The core's XY stage as an actuator (a control loop moves it: mbdl_app/session/stage_control.py).
        SourceError when the source is not open or the configuration has no XY stage."""
        if self._core is None:
            raise SourceError(f"{self.uri}: source is not open")
        if not self._core.getXYStageDevice():
            raise SourceError(f"{self.uri}: the configuration has no XY stage (Core-XYStage) to move")
        return MMXYStage(self._core, self.uri)

    def close(self) -> None:
        """Stop the sequence; unload the devices of a core this source loaded. Idempotent."""
        core, self._core = self._core, None
        if core is None:
            return
        try:
            if core.isSequenceRunning():
                core.stopSequenceAcquisition()
        except Exception as e:
            log.warning("%s: stopping the sequence acquisition failed: %s", self.uri, _one_line(e))
        if self._given_core is None:
            try:
                core.unloadAllDevices()
            except Exception as e:
                log.warning("%s: unloading the devices failed: %s", self.uri, _one_line(e))

    # ------------------------------------------------------------------ read

    def read(self, timeout: float = 0.1) -> MMFrame | None:
        """The oldest image in the circular buffer, or None after `timeout`.

        SourceError once when the camera stops acquiring; later reads restart it.
        """
        core = self._core
        if core is None:
            raise SourceError(f"{self.uri}: source is not open")
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            if self._retry_at is not None and not self._restart(deadline):
                return None
            try:
                if core.getRemainingImageCount() > 0:
                    img, md = core.popNextImageAndMD()
                    return self._frame(img, md)
                running = core.isSequenceRunning()
            except SourceError:
                raise
            except Exception as e:
                self._fail(f"failed ({_one_line(e)})")
            if not running:  # the buffer is drained and nothing refills it
                overflow = ""
                try:
                    if core.isBufferOverflowed():
                        overflow = "; the circular buffer overflowed (reader too slow)"
                except Exception:  # the query itself is best effort
                    pass
                self._fail(f"stopped acquiring (unplugged, failed snap or driver error{overflow})")
            now = time.monotonic()
            if now >= deadline:
                return None
            time.sleep(min(POLL_S, deadline - now))

    def _fail(self, what: str) -> None:
        """Stop the sequence, schedule a restart, and raise the one SourceError about it."""
        try:
            self._core.stopSequenceAcquisition()
        except Exception:  # the camera is already in trouble; the restart will tell
            pass
        self._retry_at = time.monotonic() + self._backoff
        raise SourceError(f"{self.uri}: camera {self._label} {what}; restarting")

    def _restart(self, deadline: float) -> bool:
        """Wait for the retry time (up to `deadline`) and restart the sequence; True if it runs."""
        now = time.monotonic()
        if now < self._retry_at:
            time.sleep(max(min(self._retry_at, deadline) - now, 0.0))
            if time.monotonic() < self._retry_at:
                return False
        try:
            self._core.startContinuousSequenceAcquisition(0.0)
        except Exception as e:
            self._backoff = min(2 * self._backoff, BACKOFF_MAX_S)
            self._retry_at = time.monotonic() + self._backoff
            log.debug("%s: restart failed (%s); next try in %.1f s", self.uri, _one_line(e),
                      self._backoff)
            return False
        self._t_start = time.monotonic()
        self._base = self._next_index
        self._retry_at, self._backoff = None, BACKOFF_MIN_S
        self.restarts += 1
        log.info("%s: camera %s acquiring again", self.uri, self._label)
        return True

    def _stage_meta(self) -> dict[str, Any]:
        """The stage positions, re-read from the core at most every stage_poll_s."""
        now = time.monotonic()
        if now - self._stage_t >= self.stage_poll_s:
            self._stage_t = now
            try:
                if self._xy_stage:
                    self._stage["stage_xy_um"] = [float(v) for v in self._core.getXYPosition()]
                if self._focus:
                    self._stage["stage_z_um"] = float(self._core.getPosition())
            except Exception as e:  # a stage fault must not stop the images
                log.warning("%s: reading the stage position failed: %s", self.uri, _one_line(e))
        return dict(self._stage)

    def _frame(self, img: np.ndarray, md: Any) -> MMFrame:
        t_host = time.monotonic()
        tags = {str(k): str(v) for k, v in dict(md).items()}
        data = np.asarray(img)
        data = data[None] if data.ndim == 2 else np.moveaxis(data[..., :3], -1, 0)
        if data.shape != self._info.shape:
            raise SourceError(f"{self.uri}: camera {self._label} gave an image of shape "
                              f"{data.shape[1:]}, not {self._info.shape[1:]} (ROI or binning "
                              "changed while streaming)")
        try:
            index = self._base + int(tags["ImageNumber"])
        except (KeyError, ValueError):
            index = self._next_index
        try:
            t = self._t_start + float(tags["ElapsedTime-ms"]) / 1000.0
        except (KeyError, ValueError):
            t = t_host
        self._next_index = index + 1
        meta = self._stage_meta()
        meta["image"] = tags
        return MMFrame(index, t, data.astype(np.float32), t_host=t_host, meta=meta)


def _roi(parsed: ParsedURI) -> tuple[int, int, int, int] | None:
    raw = parsed.params.get("roi")
    if raw is None:
        return None
    try:
        values = tuple(int(v) for v in raw.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise SourceError(f"{parsed.uri}: roi={raw!r} is not x,y,w,h (four integers)")
    return values  # type: ignore[return-value]


def source_from_uri(parsed: ParsedURI) -> MMCoreSource:
    """`mmcore:/path/MMConfig.cfg?exposure=10&roi=x,y,w,h&camera=LABEL&stage_poll=0.1`."""
    parsed.check_known({"exposure", "roi", "camera", "stage_poll"})
    if not parsed.target:
        raise SourceError(f"{parsed.uri}: no Micro-Manager config given (mmcore:PATH.cfg)")
    return MMCoreSource(parsed.target, camera=parsed.get("camera", None),
                        exposure_ms=parsed.get("exposure", None, float), roi=_roi(parsed),
                        stage_poll_s=parsed.get("stage_poll", 0.1, float), uri=parsed.uri)
