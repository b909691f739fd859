"""The frozen app's entry point: `mbdl ...` exactly as the installed console script.

MBDL_QT_PROBE=1 runs `mbdl doctor`'s Qt probe instead (what `python -c PROBE` does unfrozen). One test
hook, for packaging/desktop/smoke.py only: MBDL_SMOKE_GUI_S=S opens the GUI on the
default session (offscreen when no display), prints `first_frame_s=T` when an imaging view
first shows a frame (T from the process's creation, so it includes the bootloader unpacking
nothing and Python starting: the cold start a user waits through), and quits after S seconds
with exit code 0, or 1 when no frame came.
"""

import os
import sys


def _smoke_gui(seconds: float) -> int:
    import time

    import psutil

    born = psutil.Process().create_time()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QTimer

    from ui.app import build_window, make_app
    from ui.views.image_grid import ImageGridView

    app = make_app()
    window = build_window()
    window.show()
    seen: dict[str, float] = {}

    def poll():
        if "first" not in seen and any(
            isinstance(v, ImageGridView) and v.updates > 0 for _, v in window.views.values()
        ):
            seen["first"] = time.time() - born
            print(f"first_frame_s={seen['first']:.3f}", flush=True)

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(poll)
    timer.start()
    QTimer.singleShot(int(seconds * 1000), app.quit)
    app.exec()
    window.close()
    return 0 if "first" in seen else 1


if __name__ == "__main__":
    if os.environ.get("MBDL_QT_PROBE"):  # `mbdl doctor`'s Qt probe (a frozen app has no `python -c`)
        from mbdl_app.doctor import _QT_PROBE

        exec(_QT_PROBE)
        sys.exit(0)
    if os.environ.get("MBDL_SMOKE_GUI_S"):
        sys.exit(_smoke_gui(float(os.environ["MBDL_SMOKE_GUI_S"])))
    from mbdl_app.cli import main

    main()
