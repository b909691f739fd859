"""Pure-Python Micro-Manager devices for the mmcore: tests (pymmcore-plus UniMMCore).

SmlmCamera serves sim:smlm frames at the pace of its exposure and numbers them in its
own metadata ("SimFrame"), so a test can tell a dropped frame from a late one.
FailingSmlmCamera raises once, at frame FAIL_AT, then works again (an unplug that
comes back). SimXYStage and SimZStage hold a position. A .cfg names them with
`#py pyDevice,<label>,_mm_devices,<class>` lines (this folder on sys.path).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, StageDevice, XYStageDevice

from drivers.sim.smlm import SmlmParams, SmlmSimulator

SIZE = 64


class SmlmCamera(SimpleCameraDevice):
    """A 64 x 64 uint16 camera whose frames are SmlmSimulator(SmlmParams(size=64), seed 1)'s."""

    def __init__(self) -> None:
        super().__init__()
        self._exposure_ms = 10.0
        self.sim = SmlmSimulator(SmlmParams(size=SIZE), 1)
        self._next_due: float | None = None

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._exposure_ms = float(exposure)

    def sensor_shape(self) -> tuple[int, int]:
        return (SIZE, SIZE)

    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16)

    def snap(self, buffer: np.ndarray) -> Mapping:
        # absolute deadlines: frame k leaves k exposures after the first, without drift
        now = time.monotonic()
        if self._next_due is None or self._next_due < now - 0.5:
            self._next_due = now
        time.sleep(max(self._next_due - now, 0.0))
        self._next_due += self._exposure_ms / 1000.0
        k = self.sim.index
        buffer[:], _ = self.sim.next_frame()
        return {"SimFrame": str(k)}


class FailingSmlmCamera(SmlmCamera):
    """SmlmCamera that raises once, when asked for frame FAIL_AT."""

    FAIL_AT = 20

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def snap(self, buffer: np.ndarray) -> Mapping:
        if self.sim.index == self.FAIL_AT and not self.failed:
            self.failed = True
            raise OSError("USB transfer failed (cable pulled)")
        return super().snap(buffer)


class SimXYStage(XYStageDevice):
    """An XY stage that moves instantly."""

    def __init__(self) -> None:
        super().__init__()
        self._xy = (0.0, 0.0)

    def set_position_um(self, x: float, y: float) -> None:
        self._xy = (float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        return self._xy

    def set_origin_x(self) -> None:
        self._xy = (0.0, self._xy[1])

    def set_origin_y(self) -> None:
        self._xy = (self._xy[0], 0.0)

    def home(self) -> None:
        self._xy = (0.0, 0.0)

    def stop(self) -> None:
        pass


class SimZStage(StageDevice):
    """A focus drive that moves instantly."""

    def __init__(self) -> None:
        super().__init__()
        self._z = 0.0

    def set_position_um(self, val: float) -> None:
        self._z = float(val)

    def get_position_um(self) -> float:
        return self._z

    def set_origin(self) -> None:
        self._z = 0.0

    def home(self) -> None:
        self._z = 0.0

    def stop(self) -> None:
        pass
