"""A live session without a screen: what `mbdl run` and a display-less `mbdl` do.

A status line per second on stderr while it runs, the final tables when it ends (Ctrl-C,
SIGTERM, the duration, or the sources' end); the exit code says whether anything failed.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from mbdl_app.config import SessionConfig
from mbdl_app.session.report import final_tables, status_line
from mbdl_app.session.session import Session


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (systemd, `docker stop` on a headless Jetson) stops a run as Ctrl-C does: sessions
    stop, recordings close, final tables print. Only the main thread can take signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_session(cfg: SessionConfig, duration: float | None, record: Path | None,
                quiet: bool = False, housekeeping=None) -> int:
    """Run a session headless with a status line per second; print the final tables.
    `housekeeping` (session.rotation.Housekeeping): recording rotation and a health line."""
    session = Session(cfg, record=record)
    session.start()

    def tick(st):
        if not quiet:
            print(status_line(st), file=sys.stderr, flush=True)
        if housekeeping is not None:
            housekeeping.tick(session, st)

    try:
        with _sigterm_as_interrupt():
            session.run(duration, on_tick=tick)
    except KeyboardInterrupt as e:
        print(f"mbdl: stopping ({str(e) or 'Ctrl-C'})", file=sys.stderr)
    finally:
        session.stop()
    st = session.status()
    final_tables(st)
    if session.control is not None:  # a stage-tracking session: its closed-loop cost
        c = session.control
        print(f"control: {c.estimator_name} + {c.controller_name}, {len(c.history)} frames, J = {c.J:.3f} "
              f"(oracle LQG {c.J_oracle:.3f})", flush=True)
    failed = [n for n, e in st.engines.items() if e["state"] == "failed"]
    failed += [n for n, s in st.sources.items() if s["state"] == "failed"]
    if st.recorder and st.recorder["state"] == "failed":
        failed.append("recorder")
    return 1 if failed else 0
