"""Print the project's requirements from pyproject.toml, one per line, for pip in the packaging
scripts: the base dependencies plus the named extras, less the named distributions.

    python3 packaging/deps.py --extra gui --without torch          (the desktop bundle)
    python3 packaging/deps.py --without torch onnxruntime          (Jetson: NVIDIA's wheels instead)

The packaging scripts install the project itself with `--no-deps` and these lines beside it, so a
platform's own builds (the Jetson index's torch and onnxruntime-gpu, the system TensorRT) are never
replaced by PyPI's x86-minded pins.
"""

import argparse
import re
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10 (JetPack 6)
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _load(path: Path) -> dict:
    if tomllib is not None:
        with open(path, "rb") as f:
            return tomllib.load(f)["project"]
    # a bare Python 3.10 (the Jetson image before the venv): read the two arrays we need by hand
    text = path.read_text()
    project: dict = {"dependencies": [], "optional-dependencies": {}}
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    project["dependencies"] = re.findall(r'"([^"]+)"', block[1]) if block else []
    extras = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?:^\[|\Z)", text, re.S | re.M)
    for name, body in re.findall(r"^([\w-]+) = \[(.*?)\]", extras[1] if extras else "", re.S | re.M):
        project["optional-dependencies"][name] = re.findall(r'"([^"]+)"', body)
    return project


def requirements(pyproject: Path, extras: list[str], without: list[str]) -> list[str]:
    project = _load(pyproject)
    reqs = list(project.get("dependencies", []))
    for extra in extras:
        if extra not in project.get("optional-dependencies", {}):
            raise SystemExit(f"deps.py: --extra {extra}: no such extra in {pyproject}")
        reqs += project["optional-dependencies"][extra]
    drop = {w.lower() for w in without}
    return [r for r in reqs if _name(r) not in drop]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--pyproject", type=Path, default=root / "pyproject.toml")
    parser.add_argument("--extra", nargs="*", default=[])
    parser.add_argument("--without", nargs="*", default=[])
    args = parser.parse_args(argv)
    print("\n".join(requirements(args.pyproject, args.extra, args.without)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
