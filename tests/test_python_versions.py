"""The generated projects support Python 3.10 and newer; `scaffold` itself needs 3.11.

Under a Python 3.10 of this machine (pyenv's included): every project's code compiles, and
every name it takes from the standard library exists in 3.10's (tomllib, datetime.UTC,
typing.Self... are 3.11's); and pip resolves the projects' dependencies for 3.10. Training
under 3.10 would need a 3.10 build of torch, which only comes as a CUDA build of several GB
here: the code and the dependencies are what could differ from 3.11, and both are checked.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, TASKS, render, run

# Run by Python 3.10: compile every file of a folder, and import each standard-library name
# that the code uses (`import X`, `from X import Y`, `X.Y`); print what 3.10 lacks.
STDLIB_CHECK = r"""
import ast, importlib, json, sys
from pathlib import Path

stdlib = set(json.loads(sys.argv[2]))
missing = []
for path in sorted(Path(sys.argv[1]).rglob("*.py")):
    source = path.read_text(encoding="utf-8")
    compile(source, str(path), "exec")  # 3.10's syntax, or a SyntaxError
    tree = ast.parse(source)
    uses, modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] in stdlib:
                    uses.append((node.lineno, alias.name, None))
                    bound = alias.asname or alias.name.partition(".")[0]
                    modules[bound] = alias.name if alias.asname else bound
        elif isinstance(node, ast.ImportFrom) and not node.level:
            if node.module.partition(".")[0] in stdlib and node.module != "__future__":
                uses += [(node.lineno, node.module, alias.name) for alias in node.names]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in modules:
                uses.append((node.lineno, modules[node.value.id], node.attr))
    for line, module, name in uses:
        try:
            found = importlib.import_module(module)
            if name is not None and not hasattr(found, name):
                importlib.import_module(f"{module}.{name}")
        except ImportError:
            missing.append(f"{path}:{line}: {module}" + (f".{name}" if name else ""))
print("\n".join(sorted(set(missing))))
"""


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


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


needs_310 = pytest.mark.skipif(python_310() is None, reason="no Python 3.10 here")


def test_the_generator_says_it_needs_python_3_11():
    metadata = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert metadata["requires-python"] == ">=3.11"
    assert "Python 3.11 or newer" in (REPO / "README.md").read_text()


@needs_310
def test_every_generated_project_is_python_3_10_code(template_copy, tmp_path):
    """Both styles of every task, with every extra and a tracker (the most code), and the
    pretrained backbones: compiled by 3.10, and their standard-library names found there."""
    trackers = iter(["tensorboard", "mlflow", "wandb"] * 4)
    for task in TASKS:
        for framework in ("raw", "lightning"):
            extras = ["sweeps", "slurm"] + ([] if task == "language-modeling" else ["folds"])
            answers = {"task": task, "framework": framework, "hardware": "multi-gpu"}
            answers |= {"project_name": f"{task.split('-')[0]}-{framework}"}
            answers |= {"extras": extras, "logger": next(trackers), "python_version": "3.10"}
            project = render(template_copy, tmp_path / f"{task}-{framework}", **answers)
            assert 'requires-python = ">=3.10"' in (project / "pyproject.toml").read_text()
            if task != "tabular-regression":  # no pretrained tabular model
                answers |= {"backbone": "pretrained"}
                render(template_copy, tmp_path / f"{task}-{framework}-pretrained", **answers)
    stdlib = sorted(sys.stdlib_module_names)  # 3.11's or later: a superset of 3.10's
    result = run([python_310(), "-c", STDLIB_CHECK, str(tmp_path), json.dumps(stdlib)])
    assert result.stdout.strip() == "", f"not in Python 3.10:\n{result.stdout}"


@pytest.mark.slow
@pytest.mark.timeout(600)
@needs_310
def test_pip_resolves_the_projects_dependencies_for_python_3_10(template_copy, tmp_path):
    """What `pip install -e .` installs under 3.10, as pip resolves it there (from the
    package index, without installing): every default project's dependencies together."""
    requirements = set()
    for task in TASKS:
        for framework in ("raw", "lightning"):
            project = render(
                template_copy, tmp_path / f"{task}-{framework}", task=task, framework=framework
            )
            metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
            assert metadata["requires-python"] == ">=3.10"
            requirements |= set(metadata["dependencies"])
    report = tmp_path / "report.json"
    run(
        [python_310(), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        + ["--only-binary=:all:", "--report", str(report), *sorted(requirements)],
        timeout=500,
    )
    chosen = {
        canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    for requirement in requirements:
        name = canonical(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0])
        assert name in chosen, (name, sorted(chosen))
    print("under Python 3.10:", {name: chosen[name] for name in ("torch", "lightning", "numpy")})
