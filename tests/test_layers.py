"""The rooms and the way imports run between them: ``lrml`` (the library) imports no Ray and nothing of the
tuning package; the search (``lrml_tune.sweep``) imports nothing of the comparison after it."""
from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from conftest import REPO

ROOMS = {"lrml": ("lrml_tune", "ray"), "lrml_tune/sweep": ("lrml_tune.comparison",)}


def imported_modules(path) -> set[str]:
    """Every module a source file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("room, forbidden", ROOMS.items())
def test_imports_only_point_down(room, forbidden):
    sources = sorted((REPO / room).rglob("*.py"))
    assert sources
    crossing = {f"{path.relative_to(REPO)} imports {module}" for path in sources for module in imported_modules(path)
                if any(module == name or module.startswith(name + ".") for name in forbidden)}
    assert not crossing


def test_importing_every_lrml_module_loads_no_ray():
    """What the issue asks of the library, as a user would check it: every module imported, no Ray in the process."""
    code = ("import pkgutil, importlib, sys, lrml\n"
            "names = [m.name for m in pkgutil.walk_packages(lrml.__path__, 'lrml.')]\n"
            "for name in names: importlib.import_module(name)\n"
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray was imported'\n"
            "print(len(names))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20  # every module was imported: the package has that many and more
