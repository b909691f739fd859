"""What `mbdl` with no arguments does: the GUI when it can, else the headless default.

mbdl_app never imports ui/ (the layers point down): the GUI registers itself under
the entry-point group `mbdl.gui`, and this module finds it there, as a plugin.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points


def display_available() -> bool:
    """True when Qt could open a window here (a display, or QT_QPA_PLATFORM chosen)."""
    if os.environ.get("QT_QPA_PLATFORM"):
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def gui_entry(name: str = "run") -> Callable[..., int] | None:
    """The GUI's entry `name` ("run": run_gui, "bench": run_gui_bench) when the GUI
    and Qt are installed, else None."""
    if importlib.util.find_spec("PySide6") is None:
        return None
    for ep in entry_points(group="mbdl.gui", name=name):
        try:
            return ep.load()
        except ImportError:
            return None
    return None


def launch_default() -> int:
    """Open the GUI on the default session; without a display or the GUI, say so in
    one line and run the default session headless exactly as `mbdl run` would."""
    from mbdl_app.config import default_config
    from mbdl_app.session.headless import run_session

    gui = gui_entry()
    if not display_available():
        print("mbdl: no display found (DISPLAY/WAYLAND_DISPLAY unset); running the default "
              "session headless, as `mbdl run` (Ctrl-C to stop)", file=sys.stderr)
    elif gui is None:
        print("mbdl: the GUI is not installed here (pip install 'mbdl-studio[gui]'); running "
              "the default session headless, as `mbdl run` (Ctrl-C to stop)", file=sys.stderr)
    else:
        return gui()
    return run_session(default_config(), None, None)
