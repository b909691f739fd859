"""An engine added to a running session (`Session.add_engine`, `Studio.add_engine`, `artifact_engine`,
`mbdl run --calibrated`): an artifact folder by path runs beside the shipped engine, no restart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import exported_models
from drivers.recording import RecordingReader
from mbdl_app.config import EngineConfig, SessionConfig, SourceConfig
from mbdl_app.errors import SessionError
from mbdl_app.session import Session
from mbdl_app.session.studio import Studio, artifact_engine

CEUS = SessionConfig(sources=[SourceConfig(name="ceus", uri="sim:ceus?seed=11&rate=40&height=32&width=64")],
                     engines=[EngineConfig(name="corona-ceus", hop=20)])


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A copy of the shipped CORONA outside exported_models/ under another name (as `mbdl calibrate`
    writes one; the card is not among the hashed files)."""
    out = tmp_path_factory.mktemp("art") / "my-corona"
    shutil.copytree(Path(exported_models.ROOT) / "corona-ceus", out)
    card = json.loads((out / "card.json").read_text())
    (out / "card.json").write_text(json.dumps({**card, "name": "corona-ceus-mine"}))
    return out


def wait_for(cond, timeout=30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def results(session: Session, label: str) -> int:
    return session.status().engines[label]["results"]


def test_an_artifact_folder_is_an_engine_named_by_path_and_labelled_by_its_card(folder):
    ec = artifact_engine(folder, source="ceus")
    assert ec.name == str(folder.resolve()) and ec.label == "corona-ceus-mine" and ec.source == "ceus"
    with pytest.raises(SessionError, match="not an artifact folder"):
        artifact_engine(folder.parent)


def test_an_engine_added_to_a_running_session_runs_beside_the_others_without_a_restart(folder):
    with Session(CEUS) as session:
        assert wait_for(lambda: results(session, "corona-ceus") >= 20)
        source = session.streams["ceus"].source
        label = session.add_engine(artifact_engine(folder))
        assert label == "corona-ceus-mine" and session.bindings[label] == "ceus"
        assert wait_for(lambda: results(session, label) >= 20)
        assert session.streams["ceus"].source is source  # same source, never reopened
        shipped = results(session, "corona-ceus")
        assert wait_for(lambda: results(session, "corona-ceus") > shipped)  # the shipped one goes on
        st = session.status().engines
        assert st[label]["state"] == st["corona-ceus"]["state"] == "running"
        with pytest.raises(SessionError, match="already has one"):
            session.add_engine(artifact_engine(folder))
        with pytest.raises(SessionError, match="reading engine"):
            session.add_engine(EngineConfig(name="ulm-lista", input="corona-ceus"))


def test_adding_while_recording_goes_on_in_a_next_part_that_holds_the_new_engine(folder, tmp_path):
    studio = Studio(CEUS)
    studio.start()
    try:
        studio.start_recording(tmp_path / "rec.h5")
        session = studio.session
        assert wait_for(lambda: results(session, "corona-ceus") >= 20)
        studio.add_engine(artifact_engine(folder))
        assert studio.session is session and studio.recording_path == tmp_path / "rec.part2.h5"
        assert wait_for(lambda: results(session, "corona-ceus-mine") >= 40)
        assert [e.label for e in studio.config.engines] == ["corona-ceus", "corona-ceus-mine"]
    finally:
        studio.stop()
    with RecordingReader(tmp_path / "rec.h5") as first:
        assert [e for _, e in first.results] == ["corona-ceus"]
    with RecordingReader(tmp_path / "rec.part2.h5") as second:
        assert {e for _, e in second.results} == {"corona-ceus", "corona-ceus-mine"}
        assert len(second.result_arrays("ceus", "corona-ceus-mine", ["index"])["index"]) > 0


def test_mbdl_run_calibrated_runs_the_folder_beside_the_shipped_engine(folder):
    proc = subprocess.run([sys.executable, "-m", "mbdl_app.cli", "run", "--source",
                           "sim:ceus?seed=11&rate=40&height=32&width=64", "--engine", "corona-ceus/20",
                           "--calibrated", str(folder), "--duration", "2", "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if "corona-ceus" in line]
    assert any("corona-ceus-mine" in r for r in rows) and any("corona-ceus " in r for r in rows)
