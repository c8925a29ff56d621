"""pagellm.core must stay importable without torch (the scheduler runs in a torch-free process)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pagellm.core

CORE_DIR = Path(pagellm.core.__file__).parent
CORE_MODULES = sorted(f"pagellm.core.{m.name}" for m in pkgutil.iter_modules([str(CORE_DIR)]))


def imported_names(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_core_module_names_torch():
    for path in sorted(CORE_DIR.glob("*.py")):
        torch_imports = {n for n in imported_names(path) if n.split(".")[0] in ("torch", "triton")}
        assert not torch_imports, f"{path.name} imports {torch_imports}"


def test_importing_core_loads_no_torch():
    code = ("import importlib, sys\n"
            f"for name in {CORE_MODULES!r}: importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=CORE_DIR.parent.parent)
    assert "pagellm.core.scheduler" in CORE_MODULES
    assert result.stdout.strip() == "[]"
