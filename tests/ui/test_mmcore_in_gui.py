"""A Micro-Manager source opened while the GUI's QApplication is alive (the microscopist's path)."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pytest

pytest.importorskip("pymmcore_plus", reason="pymmcore-plus is not installed "
                    "(pip install 'mbdl-studio[microscopy]')")

from drivers import open_source  # noqa: E402

DEVICES = Path(__file__).parents[1] / "drivers"
CONFIG = """\
#py pyDevice,Cam,_mm_devices,SmlmCamera
#py pyDevice,XY,_mm_devices,SimXYStage
Property,Core,Initialize,1
#py Property,Core,Camera,Cam
#py Property,Core,XYStage,XY
"""


def test_an_mmcore_source_streams_while_a_qapplication_is_running(qapp, monkeypatch, tmp_path):
    # pymmcore-plus picks Qt signals when a QApplication exists, and those need qtpy (not a
    # dependency): the source must choose its plain signal backend itself
    monkeypatch.delenv("PYMM_SIGNALS_BACKEND", raising=False)
    monkeypatch.syspath_prepend(str(DEVICES))
    importlib.import_module("_mm_devices")
    cfg = tmp_path / "gui.cfg"
    cfg.write_text(CONFIG)
    assert qapp is not None
    with open_source(f"mmcore:{cfg}?exposure=10&roi=0,0,32,32&stage_poll=0") as src:
        frames, t0 = [], time.monotonic()
        while time.monotonic() - t0 < 0.3:
            f = src.read(timeout=0.05)
            if f is not None:
                frames.append(f)
    assert len(frames) >= 10 and frames[0].data.shape[-2:] == (32, 32)
