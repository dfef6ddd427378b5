"""Imports point one way: kernel_ext -> widgets -> runtime, and the runtime loads no notebook library.

Checked twice: statically, on the source's import statements, and dynamically, by importing
``nebula`` (and every runtime module) in a fresh interpreter and looking at ``sys.modules``.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
RUNTIME, KERNEL_EXT, WIDGETS = ROOT / "runtime", ROOT / "kernel_ext", ROOT / "widgets"
PACKAGES = {RUNTIME: "nebula", KERNEL_EXT: "nebula.kernel_ext", WIDGETS: "nebula.widgets"}

NOTEBOOK_LIBRARIES = ("IPython", "ipywidgets", "bokeh", "jupyter_server", "ipykernel", "jupyter_bokeh",
                      "jupyterlab", "nebula.kernel_ext", "nebula.widgets")
RUNTIME_ENTRY_POINTS = ("load_ipython_extension", "unload_ipython_extension", "_jupyter_server_extension_points")
PUBLIC_RUNTIME = ("nebula", "nebula.state", "nebula.output", "nebula.exceptions", "nebula.util",
                  "nebula.local_cluster", "nebula.cluster_info", "nebula.object_ref", "nebula.actor",
                  "nebula.api", "nebula.session_files")


class ImportSite:
    """One imported module name, where it is imported, and the function around it (if any)."""

    def __init__(self, path: Path, line: int, module: str, function: str | None):
        self.path, self.line, self.module, self.function = path, line, module, function

    def __repr__(self):
        where = f" in {self.function}()" if self.function else " at module level"
        return f"{self.path.relative_to(ROOT)}:{self.line}: {self.module}{where}"


def python_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def package_of(path: Path) -> str:
    for directory, package in PACKAGES.items():
        if directory in path.parents:
            parts = path.relative_to(directory).parent.parts
            return ".".join((package, *parts))
    raise ValueError(path)


def resolve(path: Path, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = package_of(path).split(".")
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def is_submodule(name: str) -> bool:
    """Whether ``nebula.<...>`` names a module or package of the source tree."""
    for directory, package in sorted(PACKAGES.items(), key=lambda item: -len(item[1])):
        if name == package or name.startswith(package + "."):
            rest = name[len(package):].lstrip(".").split(".") if name != package else []
            target = directory.joinpath(*rest)
            return target.with_suffix(".py").exists() or (target / "__init__.py").exists()
    return False


def import_sites(path: Path, source: str | None = None) -> list[ImportSite]:
    """Every module an import statement in ``path`` loads, with the enclosing function."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    sites: list[ImportSite] = []

    def visit(node, function):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            function = getattr(node, "name", "<lambda>")
        if isinstance(node, ast.Import):
            sites.extend(ImportSite(path, node.lineno, alias.name, function) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = resolve(path, node.module, node.level)
            sites.append(ImportSite(path, node.lineno, base, function))
            for alias in node.names:  # `from nebula import session` loads nebula.session
                if is_submodule(f"{base}.{alias.name}"):
                    sites.append(ImportSite(path, node.lineno, f"{base}.{alias.name}", function))
        elif _is_import_module_call(node):
            sites.append(ImportSite(path, node.lineno, node.args[0].value, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(tree, None)
    return sites


def _is_import_module_call(node) -> bool:
    return (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in
            ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str))


def names_any(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


# ---- the runtime -------------------------------------------------------------------------

def test_the_checker_sees_imports_of_every_kind():
    source = ("import IPython\nfrom . import widgets\nfrom .kernel_ext import magic\n"
              "def f():\n    import bokeh\n    importlib.import_module('ipywidgets')\n"
              "try:\n    import ipykernel\nexcept ImportError:\n    pass\n")
    found = {(s.module, s.function) for s in import_sites(RUNTIME / "sample.py", source)}
    nested = {s.module for s in import_sites(WIDGETS / "views" / "sample.py", "from ... import session\n")}
    assert "nebula.session" in nested
    assert {("IPython", None), ("nebula.widgets", None), ("nebula.kernel_ext", None), ("bokeh", "f"),
            ("ipywidgets", "f"), ("ipykernel", None)} <= found


def test_runtime_imports_no_notebook_library():
    bad = []
    for path in python_files(RUNTIME):
        for site in import_sites(path):
            if not names_any(site.module, NOTEBOOK_LIBRARIES):
                continue
            allowed = path == RUNTIME / "__init__.py" and site.function in RUNTIME_ENTRY_POINTS
            if not allowed:
                bad.append(site)
    assert not bad, "the runtime must not import notebook code (only its two entry points may):\n" + \
        "\n".join(map(repr, bad))


def _loaded_in_fresh_interpreter(statement: str) -> list[str]:
    code = (f"import json, sys\n{statement}\n"
            f"print(json.dumps(sorted(m for m in sys.modules)))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_nebula_loads_no_notebook_library():
    loaded = _loaded_in_fresh_interpreter("import nebula")
    assert "nebula" in loaded
    assert not [m for m in loaded if names_any(m, NOTEBOOK_LIBRARIES)]


def test_importing_every_runtime_module_loads_no_notebook_library():
    modules = sorted(package_of(p) + ("" if p.name == "__init__.py" else "." + p.stem)
                     for p in python_files(RUNTIME) if p.name != "__main__.py")
    loaded = _loaded_in_fresh_interpreter("\n".join(f"import {m}" for m in modules))
    assert set(modules) <= set(loaded)
    assert not [m for m in loaded if names_any(m, NOTEBOOK_LIBRARIES)]


# ---- the notebook layers -----------------------------------------------------------------

def _layer_violations(directory: Path, allowed: tuple, forbidden_own: tuple = ()) -> list[ImportSite]:
    own = PACKAGES[directory]
    bad = []
    for path in python_files(directory):
        for site in import_sites(path):
            module = site.module
            if names_any(module, forbidden_own):
                bad.append(site)
            elif not names_any(module, ("nebula",)) or names_any(module, (own,)):
                continue
            elif module in allowed or names_any(module, ("nebula.util",)) and "nebula.util" in allowed:
                continue
            elif module == "nebula.widgets" or module.startswith("nebula.widgets."):
                if "nebula.widgets" not in allowed:
                    bad.append(site)
            else:
                bad.append(site)
    return bad


def _skip_if_empty(directory: Path) -> None:
    if not python_files(directory):
        pytest.skip(f"{directory.name}/ has no Python files yet")


def test_widgets_use_only_public_runtime_names():
    _skip_if_empty(WIDGETS)
    bad = _layer_violations(WIDGETS, PUBLIC_RUNTIME, forbidden_own=("nebula.kernel_ext",))
    assert not bad, "widgets/ may import only public runtime modules " + \
        f"({', '.join(PUBLIC_RUNTIME)}), never kernel_ext:\n" + "\n".join(map(repr, bad))


def test_kernel_ext_uses_only_public_runtime_names_and_widgets():
    _skip_if_empty(KERNEL_EXT)
    bad = _layer_violations(KERNEL_EXT, PUBLIC_RUNTIME + ("nebula.widgets",))
    assert not bad, "kernel_ext/ may import only public runtime modules and nebula.widgets:\n" + \
        "\n".join(map(repr, bad))
