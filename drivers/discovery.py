"""What devices this host has: cameras and serial ports, with whether each opens now.

`list_devices()` is for a device picker: fast (each probe is one open and close, the
whole listing stops probing after `budget_s`) and it never raises. A device in use by
a running session (or another program) reports opens=False with the reason. Opening a
serial port raises DTR, which resets many Arduino-style boards: call it from a user's
action, not on a timer.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

_MAX_INDEX = 5  # camera indices probed where /dev/video* does not exist


def _camera_name(path: str) -> str:
    """The V4L2 card name from sysfs (no device access), or the path."""
    try:
        name = Path(f"/sys/class/video4linux/{Path(path).name}/name").read_text().strip()
        return name or path
    except OSError:
        return path


def _probe_camera(cv2, device: int | str) -> tuple[bool, str | None]:
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    cap = cv2.VideoCapture(device, api)
    try:
        if cap.isOpened():
            return True, None
        return False, "cannot open (missing, busy, no permission or not a capture node)"
    finally:
        cap.release()


def _cameras(deadline: float) -> list[dict]:
    try:
        import cv2
    except ImportError as e:
        return [{"kind": "camera", "uri": None, "name": "OpenCV", "opens": False,
                 "error": f"OpenCV unavailable ({e})"}]
    if sys.platform.startswith("linux"):
        paths = sorted(glob.glob("/dev/video*"),
                       key=lambda p: int(m.group()) if (m := re.search(r"\d+$", p)) else 0)
        targets: list[int | str] = list(paths)
    else:
        targets = list(range(_MAX_INDEX))
    out = []
    for dev in targets:
        entry = {"kind": "camera", "uri": f"camera:{dev}",
                 "name": _camera_name(dev) if isinstance(dev, str) else f"camera {dev}",
                 "opens": False, "error": None}
        if time.monotonic() > deadline:
            entry["error"] = "not probed (time budget spent)"
        else:
            try:
                entry["opens"], entry["error"] = _probe_camera(cv2, dev)
            except Exception as e:  # a driver may throw anything; the listing goes on
                entry["error"] = f"probe failed ({e})"
        # where indices are probed, only the ones that exist are devices
        if isinstance(dev, str) or entry["opens"]:
            out.append(entry)
    return out


def _serial_ports(deadline: float) -> list[dict]:
    try:
        import serial
        from serial.tools import list_ports
    except ImportError as e:
        return [{"kind": "serial", "uri": None, "name": "pyserial", "opens": False,
                 "error": f"pyserial unavailable ({e})"}]
    out = []
    for port in sorted(list_ports.comports(), key=lambda p: p.device):
        entry = {"kind": "serial", "uri": f"serial:{port.device}",
                 "name": port.description if port.description not in (None, "n/a")
                 else port.device,
                 "hwid": port.hwid, "opens": False, "error": None}
        if time.monotonic() > deadline:
            entry["error"] = "not probed (time budget spent)"
        else:
            try:
                serial.Serial(port.device, timeout=0,
                              exclusive=True if os.name == "posix" else None).close()
                entry["opens"] = True
            except Exception as e:
                entry["error"] = str(e)
        out.append(entry)
    return out


def list_devices(budget_s: float = 2.0) -> list[dict]:
    """Cameras then serial ports, each {kind, uri, name, opens, error} (serial: + hwid).

    `uri` opens the device with drivers.open_source; `error` says why it does not
    open (None when it does). Probing stops after `budget_s`; later devices are still
    listed, with opens=False. Never raises: a failing probe becomes an entry's error.
    """
    deadline = time.monotonic() + budget_s
    out: list[dict] = []
    for kind, lister in (("camera", _cameras), ("serial", _serial_ports)):
        try:
            out += lister(deadline)
        except Exception as e:
            log.warning("device listing: %s devices failed (%s)", kind, e)
            out.append({"kind": kind, "uri": None, "name": "listing failed", "opens": False,
                        "error": str(e)})
    return out
