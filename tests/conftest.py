"""Shared helpers: render the template, install a generated project, run its commands."""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest

from generator.questions import MATRIX_AXES, matrix, template_root

REPO = Path(__file__).resolve().parent.parent
COMBINATIONS = matrix()
TASKS = sorted({c["task"] for c in COMBINATIONS})
RUN_FILES = {
    "config.yaml",
    "metrics.csv",
    "curves.png",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
}


def combination_id(combination: dict[str, str]) -> str:
    return "-".join(combination[axis] for axis in MATRIX_AXES)


def package_of(combination: dict[str, str]) -> str:
    """A short, distinct package name per combination: img_raw_multi_gpu, ..."""
    task = {"image": "img", "text": "txt", "tabular": "tab", "language": "lm"}
    short = task[combination["task"].split("-")[0]]
    return f"{short}_{combination['framework']}_{combination['hardware']}".replace("-", "_")


@pytest.fixture(scope="session")
def template_copy(tmp_path_factory) -> Path:
    """The template outside git: Copier renders the working tree as it is, without cloning."""
    root = tmp_path_factory.mktemp("template")
    shutil.copy(template_root() / "copier.yml", root)
    shutil.copytree(template_root() / "template", root / "template")
    return root


def render(source: Path, dest: Path, **answers: str) -> Path:
    """Render the template into dest with these answers (defaults for the rest)."""
    from copier import run_copy

    run_copy(str(source), dest, data=answers, defaults=True, quiet=True, unsafe=False)
    return dest


def render_combination(source: Path, dest: Path, combination: dict[str, str]) -> Path:
    name = package_of(combination).replace("_", "-")
    return render(source, dest, project_name=name, **combination)


@dataclass
class Installed:
    """A generated project installed in its own light venv."""

    project: Path
    python: Path
    script: Path

    def run(self, *args: str, timeout: float = 600, check: bool = True, **kwargs):
        return run(
            [str(self.script), *args], cwd=self.project, timeout=timeout, check=check, **kwargs
        )


def make_venv(path: Path) -> Path:
    """A venv without pip that sees this environment's packages (torch, lightning...).

    --system-site-packages alone would reach only the base interpreter's packages when the
    tests themselves run in a venv, so a .pth file adds this environment's site-packages.
    """
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True,
    ).strip()
    Path(site, "_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def install(project: Path, venv_dir: Path) -> Installed:
    """`pip install -e project` into a fresh venv: a real install, without downloads."""
    python = make_venv(venv_dir)
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-build-isolation", "--no-index", "-e", str(project)],
        timeout=300,
    )
    slug = project_slug(project)
    return Installed(project, python, python.parent / slug)


def project_slug(project: Path) -> str:
    import tomllib

    return tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"]


def command_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the commands the tests run."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    if "PYTEST_XDIST_WORKER" in os.environ:
        # Test workers already use every core: one thread each avoids oversubscription.
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run(cmd: list[str], *, check: bool = True, timeout: float = 600, **kwargs):
    """subprocess.run that shows the output of a failed command in the test report."""
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    result = subprocess.run(cmd, timeout=timeout, env=command_env(kwargs.pop("env", {})), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
        )
    return result


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv, one dict per epoch (Lightning spreads an epoch over several rows)."""
    epochs: dict[int, dict[str, float]] = {}
    with (run_dir / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            if row.get("epoch") in ("", None):
                continue
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            epochs.setdefault(int(float(row["epoch"])), {}).update(values)
    return [epochs[e] for e in sorted(epochs)]


def assert_learned(task: str, metrics: dict[str, float], meta: dict) -> None:
    """Clearly better than a trivial baseline, for each task."""
    if task in ("image-classification", "text-classification"):
        chance = 1 / len(meta.get("classes") or meta["labels"])
        # Most of the way from chance to perfect: 0.8 for two classes, 0.7 for four.
        assert metrics["val/acc"] >= chance + 0.6 * (1 - chance), metrics
    elif task == "tabular-regression":
        # R2 = 1 - MSE / Var(target): the MSE is under a fifth of the target's variance.
        assert metrics["val/r2"] >= 0.8, metrics
    else:
        # A model that knows nothing scores log(vocabulary size).
        assert metrics["val/loss"] < 0.5 * math.log(len(meta["chars"])), metrics


def run_files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


# --- a project's life: template repositories, git, `scaffold` run from a given checkout ----

# The files of a torch-scaffold clone that generating, updating and building a wheel need.
CHECKOUT_FILES = ("copier.yml", "template", "generator", "pyproject.toml", "README.md")


def git(*args: str, cwd) -> str:
    """git with an identity of its own: test machines may have none."""
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd).stdout


def make_template_repo(path: Path, tag: str) -> Path:
    """A git clone of torch-scaffold as this working tree has it, committed and tagged."""
    path.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CHECKOUT_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, path / name, ignore=ignore)
        else:
            shutil.copy(source, path / name)
    git("init", "--quiet", cwd=path)
    git("add", "--all", cwd=path)
    git("commit", "--quiet", "-m", "torch-scaffold", cwd=path)
    git("tag", tag, cwd=path)
    return path


def scaffold_from(checkout: Path, *args: str, cwd, env: dict[str, str] | None = None):
    """`scaffold ARGS` as run from a torch-scaffold clone at `checkout` (exit code unchecked)."""
    return run(
        [sys.executable, "-m", "generator", *args],
        cwd=cwd,
        check=False,
        timeout=300,
        stdin=subprocess.DEVNULL,
        env={"PYTHONPATH": str(checkout), **(env or {})},
    )
