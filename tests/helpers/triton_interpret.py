"""Run a test module's ``__main__`` under Triton's interpreter (``TRITON_INTERPRET=1``): the
variable must be set before triton is imported, so the checks run in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_interpreted(module: str, *args: str, timeout: float = 300,
                    extra_env: dict[str, str] | None = None) -> str:
    """``python -m module args`` from the repository root with TRITON_INTERPRET=1 (and
    ``extra_env``); its stdout. AssertionError with the output when it exits non-zero."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO_ROOT), **(extra_env or {}))
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout
