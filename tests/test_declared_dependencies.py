"""Every third-party module the shipped packages import is declared in pyproject.toml.

A fresh `pip install -e ".[gui]"` once installed and then died on `import click`, which
nothing declared (the dev extra pulled it in, so CI stayed green). These tests walk the
imports of every module of the shipped packages and check each third-party top-level
module against the distributions pyproject declares:

- a module-level import outside ui/ must be a base dependency (the headless install), or torch;
- a module-level import in ui/ must be a base or `gui` dependency, or torch;
- an import inside a function (lazy: an optional backend or device) must be declared in
  the base list or a non-dev extra;
- nothing shipped may rely on the `dev` extra;
- torch is the `torch` extra (issue 18: the base install is the torch-free runtime): a module
  may import it at module level only if the runtime's modules (RUNTIME_ROOTS and everything
  they import at module level) do not reach it. tests/engines/test_torch_free.py runs them with
  torch blocked.
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
NOT_INSTALLED_HERE = {"tensorrt": "tensorrt", "pymmcore_plus": "pymmcore-plus", "tomli": "tomli",
                      "skimage": "scikit-image", "sklearn": "scikit-learn", "bm3d": "bm3d"}
# What the torch-free runtime install imports: the live session, replay, GUI and CLI, the engine
# loader with the ONNX Runtime / TensorRT runtimes, and the numpy engines (a prefix takes a package).
RUNTIME_ROOTS = (
    "drivers", "ui", "mbdl_app.cli", "mbdl_app.launch", "mbdl_app.session", "mbdl_app.doctor",
    "mbdl_app.catalog", "mbdl_app.config", "engines.load", "engines.artifacts", "engines.runtime",
    "engines.tracking.tracker_parts", "engines.tracking.lorenz_numpy", "engines.imaging.svd_filter",
    "engines.imaging.smlm_fit", "engines.imaging.super_resolved_map", "engines.comms.sum_product",
    "engines.comms.detectors", "engines.comms.adaptive_numpy",
)


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


def _lazy_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes inside a function or an `if TYPE_CHECKING:` block (not run at import)."""
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        or (isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"))
        for inner in ast.walk(node) if inner is not node or not isinstance(node, ast.If)
    }


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _module_level_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(shipped module -> the shipped modules it imports at module level, and the third-party
    top-level modules it imports at module level). Importing a.b.c runs a and a.b too."""
    local: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for pkg in SHIPPED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = _module_name(path)
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            lazy = _lazy_nodes(tree)
            local[name], external[name] = set(), set()
            for node in ast.walk(tree):
                if id(node) in lazy:
                    continue
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                else:
                    continue
                for m in modules:
                    parts = m.split(".")
                    if parts[0] in SHIPPED:
                        local[name] |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
                    else:
                        external[name].add(parts[0])
    for name in local:  # a module's package __init__ runs first
        parts = name.split(".")
        local[name] |= {".".join(parts[:i]) for i in range(1, len(parts))}
    return local, external


def _runtime_modules() -> set[str]:
    """The shipped modules the runtime install imports: RUNTIME_ROOTS and their module-level imports."""
    local, _ = _module_level_graph()
    todo = [m for m in local if any(m == r or m.startswith(r + ".") for r in RUNTIME_ROOTS)]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen or m not in local:
            continue
        seen.add(m)
        todo.extend(local[m])
    return seen


def _third_party_imports() -> list[tuple[str, int, str, bool]]:
    """(file, line, top-level module, lazy) for every absolute import of a non-local,
    non-stdlib module in the shipped packages."""
    stdlib = set(sys.stdlib_module_names)
    found = []
    for pkg in SHIPPED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text("utf-8"), filename=str(path))
            lazy_nodes = _lazy_nodes(tree)
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
    # torch at module level: only off the runtime's import path (the test below checks where)
    if where.startswith("ui/"):
        allowed = groups["base"] | groups.get("gui", set()) | groups["torch"]
    else:
        allowed = groups["base"] | groups["torch"]
    if lazy:
        allowed |= set().union(*(v for k, v in groups.items() if k != "dev"))
    need = ("base or a non-dev extra" if lazy
            else ("base, gui or torch" if where.startswith("ui/") else "base or torch"))
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


def test_the_torch_free_runtime_imports_no_torch_at_module_level():
    _, external = _module_level_graph()
    runtime = _runtime_modules()
    assert {"engines.load", "engines.runtime.onnxruntime_runtime", "mbdl_app.session.session"} <= runtime
    torch_dists = _declared()["torch"]
    offenders = sorted(m for m in runtime
                       for top in external[m] if _distributions_of(top) & torch_dists)
    assert not offenders, (
        f"{', '.join(offenders)}: on the torch-free runtime's import path (RUNTIME_ROOTS) but import "
        "a module of the `torch` extra at module level; import it inside the function that needs it"
    )


def test_torch_is_an_extra_not_a_base_dependency():
    groups = _declared()
    assert "torch" not in groups["base"] and "torch" in groups["torch"]
