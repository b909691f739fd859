"""The embedded default session, as `mbdl run` (the README's run command) and the GUI open it."""

import subprocess
import sys

import pytest

from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.session import Session
from mbdl_app.session.report import setup_line, status_line


def test_status_lines_name_each_sources_size_and_rate_and_each_windowed_engines_hop():
    cfg = SessionConfig(
        sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=2&rate=50&size=16"),
                 SourceConfig(name="lorenz", uri="sim:lorenz?seed=2&rate=100")],
        engines=[EngineConfig(name="svd-filter", hop=4, params={"k": 1, "window": 4}),
                 EngineConfig(name="ekf")])
    with Session(cfg) as session:
        session.run(1.0)
        st = session.status()
    line = status_line(st)
    assert "ceus 16x16@50Hz" in line and "lorenz @100Hz" in line
    assert "svd-filter/4 " in line and "ekf " in line
    assert setup_line(st) == "ceus 16x16@50Hz: svd-filter/4 · lorenz @100Hz: ekf"


@pytest.mark.slow
def test_mbdl_run_on_the_default_session_runs_every_engine_and_says_its_set_up():
    proc = subprocess.run([sys.executable, "-m", "mbdl_app.cli", "run", "--duration", "8"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    status = [ln for ln in proc.stderr.splitlines() if ln.startswith("t=")]
    assert status and "ceus 48x48@20Hz" in status[-1] and "lorenz @200Hz" in status[-1]
    assert "corona-ceus/20" in status[-1] and "svd-filter/20" in status[-1]
    rows = {ln.split("│")[1].strip(): [c.strip() for c in ln.split("│")[1:-1]]
            for ln in proc.stdout.splitlines() if ln.startswith("│")}
    for engine in ("svd-filter", "corona-ceus", "ulm-lista", "ulm-lista.map", "ekf", "kalmannet-lorenz"):
        assert rows[engine][3] == "stopped" and int(rows[engine][4]) > 0, proc.stdout
