"""Every third-party module the shipped packages import is declared in pyproject.toml.

A fresh `pip install -e ".[gui]"` once installed and then died on `import click`, which
nothing declared (the dev extra pulled it in, so CI stayed green). These tests walk the
imports of every module of the shipped packages and check each third-party top-level
module against the distributions pyproject declares:

- a module-level import outside ui/ must be a base dependency (the headless install);
- a module-level import in ui/ must be a base or `gui` dependency;
- an import inside a function (lazy: an optional backend or device) must be declared in
  the base list or a non-dev extra;
- nothing shipped may rely on the `dev` extra.
"""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("mbdl_app", "ui", "engines", "drivers", "exported_models")
# Modules that are not installed here (so importlib.metadata cannot map them) -> distribution.
NOT_INSTALLED_HERE = {"tensorrt": "tensorrt", "pymmcore_plus": "pymmcore-plus", "tomli": "tomli"}


def _dist_name(requirement: str) -> str:
    """'PySide6-Essentials>=6.10,<6.12' -> 'pyside6-essentials' (PEP 503 normalized)."""
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def _declared() -> dict[str, set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    groups = {"base": {_dist_name(r) for r in project["dependencies"]}}
    for extra, reqs in project.get("optional-dependencies", {}).items():
        groups[extra] = {_dist_name(r) for r in reqs}
    return groups


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distributions_of(module: str) -> set[str]:
    mapping = _packages_distributions()
    if module in mapping:
        return {_dist_name(d) for d in mapping[module]}
    if module in NOT_INSTALLED_HERE:
        return {NOT_INSTALLED_HERE[module]}
    return {_dist_name(module)}


def _third_party_imports() -> list[tuple[str, int, str, bool]]:
    """(file, line, top-level module, lazy) for every absolute import of a non-local,
    non-stdlib module in the shipped packages."""
    stdlib = set(sys.stdlib_module_names)
    found = []
    for pkg in SHIPPED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            lazy_nodes = {
                id(inner)
                for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
                for inner in ast.walk(fn)
            }
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module]
                else:
                    continue
                for m in modules:
                    top = m.split(".")[0]
                    if top in SHIPPED or top in stdlib or top == "__future__":
                        continue
                    found.append((str(path.relative_to(ROOT)), node.lineno, top, id(node) in lazy_nodes))
    return found


def test_the_walk_finds_the_imports_it_must_check():
    tops = {m for _, _, m, _ in _third_party_imports()}
    assert {"numpy", "torch", "typer", "PySide6", "h5py"} <= tops


@pytest.mark.parametrize("where,line,module,lazy", _third_party_imports(),
                         ids=lambda v: v if isinstance(v, str) else None)
def test_every_third_party_import_of_the_shipped_packages_is_declared(where, line, module, lazy):
    groups = _declared()
    dists = _distributions_of(module)
    if where.startswith("ui/"):
        allowed = groups["base"] | groups.get("gui", set())
    else:
        allowed = set(groups["base"])
    if lazy:
        allowed |= set().union(*(v for k, v in groups.items() if k != "dev"))
    need = "base or a non-dev extra" if lazy else ("base or gui" if where.startswith("ui/") else "base")
    assert dists & allowed, (
        f"{where}:{line} imports {module} (distribution {', '.join(sorted(dists))}), "
        f"which pyproject does not declare in {need}"
    )


def test_the_readme_run_command_names_only_extras_that_exist():
    readme = (ROOT / "README.md").read_text("utf-8")
    run_cmd = readme.split("# run:", 1)[1].splitlines()[1]
    extras = set()
    for group in re.findall(r'\.\[([^\]]+)\]', run_cmd):
        extras |= {e.strip() for e in group.split(",")}
    assert extras, "the README's run command installs the project with its extras"
    assert extras <= set(_declared()) - {"base"}
