"""`python -m ui.screenshot`: the main window on a session, grabbed as PNG at given sizes.

What a new user sees first: a fresh window (no saved layout) on the default session (or
`--config`), run for a few seconds at each window size, then grabbed with Qt. The README's
screenshots come from this one command, under a virtual X server:

    xvfb-run -a -s "-screen 0 1920x1080x24" python -m ui.screenshot --out docs

Without a display it falls back to Qt's offscreen platform (same pixels, no X server).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

SIZES = ((1600, 900), (1920, 1080))


def take_screenshots(out: Path, sizes=SIZES, seconds: float = 20.0, config: str | None = None) -> list[Path]:
    """One PNG per (width, height): `out/gui-WxH.png`, each after `seconds` of a fresh session."""
    if not os.environ.get("QT_QPA_PLATFORM") and not os.environ.get("DISPLAY"):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from PySide6.QtCore import QSettings
    from PySide6.QtTest import QTest

    from mbdl_app.config import default_config, load_config
    from mbdl_app.session.studio import Studio
    from ui.app import make_app
    from ui.main_window import MainWindow

    make_app()
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in sizes:
            # a settings file of its own: the user's saved layout must not show up here
            settings = QSettings(str(Path(tmp) / f"{width}x{height}.ini"), QSettings.Format.IniFormat)
            cfg = load_config(config) if config else default_config()
            window = MainWindow(Studio(cfg), settings=settings)
            window.setGeometry(0, 0, width, height)
            window.show()
            window.guard("start", window.studio.start)
            QTest.qWait(round(1000 * seconds))
            path = out / f"gui-{width}x{height}.png"
            if not window.snapshot(path):
                raise SystemExit(f"screenshot: cannot write {path}")
            window.close()
            paths.append(path)
            print(f"{path} ({window.width()}x{window.height()})")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ui.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for gui-WxH.png")
    parser.add_argument("--seconds", type=float, default=20.0, help="run time before each grab")
    parser.add_argument("--size", action="append", default=None, metavar="WxH",
                        help="window size (repeatable; default 1600x900 and 1920x1080)")
    parser.add_argument("--config", default=None, help="session config (default: the embedded one)")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.size] if args.size else SIZES
    take_screenshots(args.out, sizes, args.seconds, args.config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
