"""The `mbdl` command line, run as a real subprocess."""

import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from drivers.recording import RecordingReader

MBDL = [sys.executable, "-m", "mbdl_app.cli"]


def mbdl(*args, timeout=60, env=None):
    return subprocess.run([*MBDL, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def one_error_line(proc):
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("mbdl: error: "), proc.stderr
    return lines[0]


def test_unknown_source_uri_is_one_line_naming_it():
    line = one_error_line(mbdl("run", "--source", "sim:nope", "--duration", "1"))
    assert "sim:nope" in line and "unknown source" in line


def test_bad_source_parameter_is_one_line_naming_it():
    line = one_error_line(mbdl("run", "--source", "sim:lorenz?rate=fast", "--duration", "1"))
    assert "rate" in line and "sim:lorenz?rate=fast" in line


def test_unknown_engine_is_one_line_naming_it():
    line = one_error_line(mbdl("run", "--engine", "nope", "--duration", "1"))
    assert "nope" in line and "unknown engine" in line


def test_malformed_config_is_one_line_naming_the_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[sources]]\nname = 'x'\n")
    line = one_error_line(mbdl("run", "--config", str(cfg), "--duration", "1"))
    assert str(cfg) in line and "uri" in line


def test_unwritable_record_path_is_one_line_naming_it(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "out.h5"
    (tmp_path / "no").write_text("a file, not a folder")
    line = one_error_line(mbdl("run", "--source", "sim:lorenz", "--engine", "ekf",
                               "--record", str(target), "--duration", "1"))
    assert str(target) in line


def test_debug_shows_the_traceback():
    proc = mbdl("--debug", "run", "--engine", "nope", "--duration", "1")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


@pytest.mark.slow
def test_run_records_and_info_describes_the_recording(tmp_path):
    out = tmp_path / "s.h5"
    proc = mbdl("run", "--source", "sim:lorenz?rate=200&seed=4", "--engine", "ekf",
                "--record", str(out), "--duration", "2")
    assert proc.returncode == 0, proc.stderr
    assert "ekf" in proc.stdout and "Engines" in proc.stdout
    assert "t=1s" in proc.stderr  # the status line, once a second
    info = json.loads(mbdl("info", str(out)).stdout)
    assert info["format_version"] == 1
    assert info["streams"]["lorenz"]["items"] >= 300
    assert info["results"]["lorenz/ekf"]["results"] >= 300


def test_info_on_a_foreign_file_is_one_line_naming_it(tmp_path):
    f = tmp_path / "foreign.h5"
    with h5py.File(f, "w") as h:
        h["x"] = np.arange(3)
    line = one_error_line(mbdl("info", str(f)))
    assert str(f) in line


@pytest.mark.slow
def test_mbdl_without_display_says_so_and_runs_the_default_session_headless():
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    p = subprocess.Popen(MBDL, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                         preexec_fn=with_default_sigint)
    first = p.stderr.readline()
    status = p.stderr.readline()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert "no display" in first and "headless" in first
    assert "ceus" in status and "svd-filter" in status and "ekf" in status
    assert p.returncode == 0 and "svd-filter" in out and "ekf" in out and "stopping (Ctrl-C)" in err


def with_default_sigint():
    """Python ignores Ctrl-C in a process started with SIGINT ignored (a background job of a
    script, as CI may run the tests): give the child the default disposition."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_sigterm_stops_a_headless_run_cleanly_and_closes_its_recording(tmp_path):
    out = tmp_path / "stopped.h5"
    p = subprocess.Popen([*MBDL, "run", "--source", "sim:lorenz?seed=2&rate=200", "--engine", "ekf",
                          "--record", str(out)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    while not p.stderr.readline().startswith("t=2s"):
        pass
    p.send_signal(signal.SIGTERM)
    stdout, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "stopping (SIGTERM)" in err and "ekf" in stdout
    with RecordingReader(out) as rec:  # closed by the clean stop, every estimate in it
        n = rec.n_items("lorenz")
        assert n >= 200 and len(rec.result_arrays("lorenz", "ekf")["data"]) == n


@pytest.mark.slow
def test_sigkill_mid_recording_leaves_a_file_with_all_but_the_last_second(tmp_path):
    out = tmp_path / "killed.h5"
    p = subprocess.Popen([*MBDL, "run", "--source", "sim:ceus?size=32&rate=100&seed=5",
                          "--engine", "svd-filter", "--record", str(out), "--duration", "60"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seconds = 0
    while seconds < 3:  # status lines "t=1s | ..." once a second
        line = p.stderr.readline()
        if line.startswith("t="):
            seconds = int(line.split("s", 1)[0][2:])
    time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    with RecordingReader(out) as rec:
        n = rec.n_items("ceus")
        idx = rec.arrays("ceus")["index"]
        res = rec.result_arrays("ceus", "svd-filter")
    # killed ~3.2 s after the first frame at 100 frames/s: at least 2.2 s must be there
    assert n >= 200, n
    assert np.array_equal(idx, np.arange(n))
    assert len(res["index"]) > 10


def test_gui_without_a_display_is_one_line_pointing_to_mbdl_run():
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    line = one_error_line(mbdl("gui", env=env))
    assert "no display" in line and "mbdl run" in line


def test_gui_with_a_malformed_config_is_one_line_naming_it(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[[engines]]\nname = 'ekf'\n")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    line = one_error_line(mbdl("gui", "--config", str(cfg), env=env))
    assert str(cfg) in line


def sigkill_a_recording_run(out, rate=200):
    """`mbdl run` recording sim:lorenz, SIGKILLed after two status lines."""
    p = subprocess.Popen([*MBDL, "run", "--source", f"sim:lorenz?seed=3&rate={rate}", "--engine", "ekf",
                          "--record", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    while not p.stderr.readline().startswith("t=2s"):
        pass
    p.send_signal(signal.SIGKILL)
    p.wait(10)


@pytest.mark.slow
def test_info_repairs_a_sigkilled_recording_and_names_both_clocks_of_each_stream(tmp_path):
    out = tmp_path / "killed.h5"
    sigkill_a_recording_run(out, rate=200)
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(out, "r")
    proc = mbdl("info", str(out))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    lorenz = info["streams"]["lorenz"]
    n = lorenz["items"]
    assert n >= 200 and info["repaired"]["kept"]["stream lorenz"] == n
    assert lorenz["nominal_rate_hz"] == 200.0
    assert lorenz["device_time_span_s"] == pytest.approx(0.02 * (n - 1))  # sim:lorenz: dt = 0.02 s
    assert lorenz["acquisition_wall_span_s"] == pytest.approx((n - 1) / 200, rel=0.1)
    with h5py.File(out, "r") as f:  # a plain reader opens what the app repaired
        assert f["streams/lorenz/data"].shape[0] == int(f["streams/lorenz/committed"][()]) == n
    again = mbdl("repair", str(out))
    assert again.returncode == 0 and "nothing to repair" in again.stdout


@pytest.mark.slow
def test_repair_command_clears_a_sigkilled_recording_and_says_what_it_kept(tmp_path):
    out = tmp_path / "killed.h5"
    sigkill_a_recording_run(out)
    proc = mbdl("repair", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{out}: cleared the open-for-write flags its writer left"
    kept = {ln.split(":")[0].strip(): int(ln.split("kept ")[1].split()[0]) for ln in lines[1:]}
    assert set(kept) == {"stream lorenz", "results lorenz/ekf"} and kept["stream lorenz"] >= 200
    with h5py.File(out, "r") as f:
        assert f["streams/lorenz/t"].shape[0] == kept["stream lorenz"]
        assert f["results/lorenz/ekf/data"].shape[0] == kept["results lorenz/ekf"]


def test_repair_of_a_file_that_is_not_hdf5_is_one_line_naming_it(tmp_path):
    f = tmp_path / "notes.h5"
    f.write_text("not a recording")
    line = one_error_line(mbdl("repair", str(f)))
    assert str(f) in line and "not an HDF5 file" in line
