"""The generated projects support Python 3.10 and newer; `scaffold` itself needs 3.11."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, TASKS, render, run


@functools.cache
def python_310() -> str | None:
    """A Python 3.10 interpreter on this machine, if there is one (pyenv's included)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [shutil.which("python3.10"), *sorted(pyenv.glob("versions/3.10*/bin/python3.10"))]
    for candidate in filter(None, candidates):
        check = subprocess.run(
            [str(candidate), "-c", "import sys; assert sys.version_info[:2] == (3, 10)"],
            capture_output=True,
        )
        if check.returncode == 0:
            return str(candidate)
    return None


def test_the_generator_says_it_needs_python_3_11():
    metadata = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert metadata["requires-python"] == ">=3.11"
    assert "Python 3.11 or newer" in (REPO / "README.md").read_text()


@pytest.mark.skipif(python_310() is None, reason="no Python 3.10 here")
def test_every_generated_project_compiles_under_python_3_10(template_copy, tmp_path):
    for task in TASKS:
        for framework in ("raw", "lightning"):
            render(
                template_copy,
                tmp_path / f"{task}-{framework}",
                task=task,
                framework=framework,
                hardware="multi-gpu",  # the most code
                python_version="3.10",
            )
    run([python_310(), "-m", "compileall", "-q", str(tmp_path)])
