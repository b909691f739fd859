"""Recording rotation, the disk budget and the health line of long headless runs
(`mbdl run --rotate-min N --keep-gb G --health-s S`), on real sessions run as a subprocess."""

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from drivers.recording import RecordingReader
from mbdl_app.errors import ConfigError
from mbdl_app.session.rotation import GB, RecordingRotation, from_options

MBDL = [sys.executable, "-m", "mbdl_app.cli"]


def mbdl(*args, timeout=90):
    return subprocess.run([*MBDL, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_rotated_files_hold_every_item_and_result_once_in_order_and_health_lines_reach_stderr(tmp_path):
    base = tmp_path / "rec.h5"
    # 0.02 min = 1.2 s a file; 500 samples/s through the EKF and 30 frames/s recorded raw; stopped by
    # SIGTERM (systemd's stop) once the fourth file is open, as a service is
    proc = subprocess.Popen([*MBDL, "run", "-s", "lorenz=sim:lorenz?seed=1&rate=500",
                             "-s", "ceus=sim:ceus?seed=1&rate=30&size=24", "-e", "ekf@lorenz",
                             "-r", str(base), "--rotate-min", "0.02", "--health-s", "1", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    series = RecordingRotation(base, 1.0)
    while len(series.files()) < 4 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(0.6)  # a few rows into the fourth file
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    files = RecordingRotation(base, 1.0).files()
    assert len(files) >= 4, [f.name for f in files]
    assert [f.name.split("-")[1] for f in files] == [f"{i:06d}" for i in range(1, len(files) + 1)]
    idx = {"lorenz": [], "ceus": [], "ekf": []}
    for f in files:
        with RecordingReader(f) as r:
            assert not r.unfinished and r.repaired is None, f  # every file closed, the last by SIGTERM
            for s in ("lorenz", "ceus"):
                idx[s].append(r.arrays(s, ["index"])["index"])
            idx["ekf"].append(r.result_arrays("lorenz", "ekf", ["index"])["index"])
    for name, parts in idx.items():
        assert all(len(p) for p in parts[:-1]), f"{name}: an empty file among {[len(p) for p in parts]}"
        whole = np.concatenate(parts)
        # contiguous across every boundary: nothing lost, nothing twice
        np.testing.assert_array_equal(whole, np.arange(whole[0], whole[0] + len(whole)), err_msg=name)
    assert sum(len(p) for p in idx["lorenz"]) > 1500  # > 3 periods at 500/s
    health = [ln for ln in done.stderr.splitlines() if ln.startswith("mbdl health ")]
    assert len(health) >= 3, done.stderr[-2000:]
    last = health[-1]
    for part in ("fps lorenz=", "ceus=", "engines ekf=", "p99=", "dropped gaps=", "skipped=",
                 "rec q=", f"file={base.stem}-", "disk used=", "files=", "free=", "rss="):
        assert part in last, (part, last)


def _series(folder, sizes):
    paths = []
    for i, size in enumerate(sizes, 1):
        p = folder / f"rec-{i:06d}-20261206T1200{i:02d}Z.h5"
        p.write_bytes(b"\0" * size)
        paths.append(p)
    return paths


def test_pruning_deletes_the_oldest_files_past_the_budget_and_never_the_current_one(tmp_path):
    old = _series(tmp_path, [400_000, 300_000, 200_000])
    (tmp_path / "other-000001-20261206T120000Z.h5").write_bytes(b"\0" * 900_000)  # not of this series
    (tmp_path / "rec.h5").write_bytes(b"\0" * 900_000)
    rot = RecordingRotation(tmp_path / "rec.h5", 60.0, keep_bytes=0.0006 * GB)
    first = rot.first_path()  # a restart: numbering goes on, and the series is brought within budget
    assert first.name.startswith("rec-000004-") and first.name.endswith("Z.h5")
    assert [p.exists() for p in old] == [False, True, True]  # 900 kB -> 500 kB <= 600 kB
    assert (tmp_path / "other-000001-20261206T120000Z.h5").exists() and (tmp_path / "rec.h5").exists()
    first.write_bytes(b"\0" * 2_000_000)  # the file being written outgrows the budget alone
    rot.prune()
    assert rot.files() == [first]
    assert rot.disk_used() == 2_000_000


@pytest.mark.parametrize("record, rotate_min, keep_gb, health_s, names", [
    (None, 1.0, None, None, "--rotate-min"),
    (None, None, 5.0, None, "--keep-gb"),
    ("x.h5", 0.0, None, None, "--rotate-min"),
    ("x.h5", 1.0, -1.0, None, "--keep-gb"),
    (None, None, None, 0.0, "--health-s"),
])
def test_bad_rotation_options_name_the_option(record, rotate_min, keep_gb, health_s, names, tmp_path):
    with pytest.raises(ConfigError, match=names):
        from_options(tmp_path / record if record else None, rotate_min, keep_gb, health_s)


def test_a_bad_rotation_option_is_one_line_from_the_cli():
    done = subprocess.run([*MBDL, "run", "-s", "sim:lorenz", "-e", "ekf", "-d", "1", "--rotate-min", "1"],
                          capture_output=True, text=True, timeout=60)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith("mbdl: error: ") and "--record" in lines[0]
