"""Shared helpers: render the template, install a generated project, run its commands."""

from __future__ import annotations

import atexit
import csv
import functools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import tomllib
import venv
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from generator.questions import MATRIX_AXES, matrix, question, template_root

REPO = Path(__file__).resolve().parent.parent
COMBINATIONS = matrix()
TASKS = sorted({c["task"] for c in COMBINATIONS})
SCRATCH = [c for c in COMBINATIONS if c["backbone"] == "scratch"]
PRETRAINED = [c for c in COMBINATIONS if c["backbone"] == "pretrained"]
# No test downloads anything: the pretrained projects load tiny models that the tests build
# (tiny_models), and whatever asks the Hugging Face hub is refused at once.
os.environ["HF_HUB_OFFLINE"] = "1"
# What a run folder holds. The projects of the tests are not git repositories: no git.diff.
RUN_FILES = {
    "config.yaml",
    "metrics.csv",
    "baseline.json",
    "record.json",
    "curves.png",
    ".lock",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
}
# The validation metrics of each task, besides val/loss.
TASK_METRICS = {
    "image-classification": ["val/acc"],
    "text-classification": ["val/acc"],
    "tabular-regression": ["val/mse", "val/r2"],
    "language-modeling": ["val/bpb", "val/ppl"],
}
# The metric a run is judged on, and whether higher is better (model.py's MONITOR).
MONITOR = {
    "image-classification": ("val/acc", "max"),
    "text-classification": ("val/acc", "max"),
    "tabular-regression": ("val/mse", "min"),
    "language-modeling": ("val/loss", "min"),
}

# A budget that learns clearly, well past the bars of assert_learned, in a few seconds: for
# the combinations whose learning under the default settings is not the point.
SHORT = {  # max_steps, eval_every
    "image-classification": (30, 10),
    "text-classification": (100, 25),
    "tabular-regression": (60, 20),
    "language-modeling": (200, 50),
}


def short(task: str) -> list[str]:
    """The flags of the task's short budget, spent to its end (patience 0: no early stop)."""
    steps, every = SHORT[task]
    return ["--max-steps", str(steps), f"train.eval_every={every}", "train.patience=0"]


def combination_id(combination: dict[str, str]) -> str:
    """image-classification-raw-cpu-scratch, ...; an axis left out takes its default."""
    return "-".join(combination.get(axis) or question(axis).default for axis in MATRIX_AXES)


def package_of(combination: dict[str, str]) -> str:
    """A short, distinct package name per combination: img_raw_multi_gpu, txt_raw_cpu_pt..."""
    task = {"image": "img", "text": "txt", "tabular": "tab", "language": "lm"}
    short = task[combination["task"].split("-")[0]]
    name = f"{short}_{combination['framework']}_{combination['hardware']}".replace("-", "_")
    return name + ("_pt" if combination.get("backbone") == "pretrained" else "")


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
class Outcome:
    """What one command of a project did: its exit code and what it printed."""

    argv: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float = 0.0

    def check(self) -> Outcome:
        """Itself, when the command succeeded; else a failure that shows its output."""
        if self.code != 0:
            raise AssertionError(
                f"{' '.join(self.argv)} exited {self.code}\n"
                f"--- stdout\n{self.stdout[-6000:]}\n--- stderr\n{self.stderr[-6000:]}"
            )
        return self


@dataclass
class Installed:
    """A generated project installed in its own light venv."""

    project: Path
    python: Path
    script: Path

    @property
    def package(self) -> str:
        return self.script.name.replace("-", "_")

    def run(self, *args: str, timeout: float = 600, check: bool = True, **kwargs):
        """The project's console script in a process of its own (`my-project ARGS`)."""
        return run(
            [str(self.script), *args], cwd=self.project, timeout=timeout, check=check, **kwargs
        )

    def drive(
        self, *commands: list[str], pytest: bool = False, timeout: float = 600, **kwargs
    ) -> list[Outcome]:
        """The commands, one after the other, in ONE process of the project's venv, each as
        its console script would run it (tests/drive_project.py); then, with pytest=True,
        the project's own tests in that process too. Exit codes are not checked here:
        `.check()` each outcome that must succeed."""
        spec = {"script": str(self.script), "commands": [list(c) for c in commands]}
        spec["pytest"] = pytest
        driver = [str(self.python), str(REPO / "tests" / "drive_project.py")]
        result = run(
            [*driver, self.package, json.dumps(spec)],
            cwd=kwargs.pop("cwd", self.project),
            timeout=timeout,
            **kwargs,
        )
        report = json.loads(result.stdout.splitlines()[-1])
        if pytest:
            assert (
                report["pytest"] == 0
            ), f"the project's own tests failed:\n{report['pytest_output'][-6000:]}"
        return [
            Outcome(list(argv), **outcome)
            for argv, outcome in zip(commands, report["commands"], strict=True)
        ]


# What only the pretrained projects depend on. A scratch project's venv does not see it, as
# its own install would not hold it; that proves no scratch code needs it, and spares each
# of its processes the import of transformers that torchmetrics makes when it can (0.8 s).
PRETRAINED_ONLY = ("transformers", "peft")


def make_venv(path: Path, hidden: tuple[str, ...] = ()) -> Path:
    """A venv without pip that sees this environment's packages (torch, lightning...), but
    for the distributions `hidden`.

    --system-site-packages alone would reach only the base interpreter's packages when the
    tests themselves run in a venv, so a .pth file adds this environment's site-packages.
    """
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(path)
    python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    site = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        text=True,
    ).strip()
    Path(site, "_outer_env.pth").write_text(f"{site_packages_without(hidden)}\n")
    return python


@functools.cache
def site_packages_without(hidden: tuple[str, ...]) -> Path:
    """This environment's site-packages, or, to hide distributions, a folder of links to
    everything in it but their packages and metadata (made once per test process)."""
    outer = Path(sysconfig.get_paths()["purelib"])
    if not hidden:
        return outer
    view = Path(tempfile.mkdtemp(prefix="site-packages-"))
    atexit.register(shutil.rmtree, view, ignore_errors=True)
    for entry in outer.iterdir():
        if entry.name.split("-")[0].lower() not in hidden:
            (view / entry.name).symlink_to(entry)
    return view


def install(project: Path, venv_dir: Path) -> Installed:
    """`pip install -e project` into a fresh venv: a real install, without downloads. The
    dependencies are this environment's: test_render checks that they satisfy the
    project's, which pip's resolver would otherwise check again at each install; what
    only pretrained projects depend on stays out of the others' venvs."""
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    needed = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower() for d in dependencies}
    python = make_venv(venv_dir, tuple(n for n in PRETRAINED_ONLY if n not in needed))
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-deps", "--no-build-isolation", "--no-index", "-e", str(project)],
        timeout=300,
    )
    slug = project_slug(project)
    return Installed(project, python, python.parent / slug)


def project_slug(project: Path) -> str:
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


def default_settings(project: Path) -> dict:
    """configs/default.yaml's settings: config.py's defaults, listed there commented out."""
    lines = (project / "configs" / "default.yaml").read_text().splitlines(keepends=True)
    return yaml.safe_load("".join(line.replace("  # ", "  ", 1) for line in lines))


def read_rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv as one row per logged step (Lightning writes its training and validation
    values on lines of their own), values as numbers."""
    rows: dict[float, dict[str, float]] = {}
    with (run_dir / "metrics.csv").open(newline="") as file:
        for line in csv.DictReader(file):
            values = {key: float(value) for key, value in line.items() if value not in ("", None)}
            rows.setdefault(values["step"], {}).update(values)
    return [rows[step] for step in sorted(rows)]


def evaluations(run_dir: Path) -> list[dict[str, float]]:
    """The rows of metrics.csv that hold an evaluation."""
    return [row for row in read_rows(run_dir) if "val/loss" in row]


def read_baseline(run_dir: Path) -> dict:
    """baseline.json: what a model that learned nothing scores on the run's validation split."""
    return json.loads((run_dir / "baseline.json").read_text())


def assert_learned(task: str, metrics: dict[str, float], baseline: dict) -> None:
    """Clearly better than the run's trivial baseline (baseline.json), for each task."""
    if task in ("image-classification", "text-classification"):
        # Most of the way from the majority class to perfect: 0.7 from a 0.25 majority.
        majority = baseline["val/acc"]
        assert metrics["val/acc"] >= majority + 0.6 * (1 - majority), (metrics, baseline)
    elif task == "tabular-regression":
        # Under a fifth of the mean predictor's error (R2 >= 0.8 when the baseline's is 0).
        assert metrics["val/mse"] <= 0.2 * baseline["val/mse"], (metrics, baseline)
    else:
        # Under half the cross-entropy of a unigram model of the characters.
        assert metrics["val/loss"] <= 0.5 * baseline["val/loss"], (metrics, baseline)


def best_row(task: str, rows: list[dict[str, float]]) -> dict[str, float]:
    """The evaluation that best.ckpt holds: the first with the best monitored metric."""
    monitor, mode = MONITOR[task]
    best = rows[0]
    for row in rows[1:]:
        if (row[monitor] > best[monitor]) if mode == "max" else (row[monitor] < best[monitor]):
            best = row
    return best


def run_files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def check_run(
    task: str, run_dir: Path, printed: str, *, exported: bool = False, cwd: Path | None = None
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """A finished run against the contract: its folder's files (with what `export` wrote
    beside best.ckpt), finite evaluations with every metric of the task, and the three
    closing lines (why it stopped, the best evaluation beside the baseline, the run folder,
    relative to `cwd`). Returns the evaluations and the best one."""
    files = run_files(run_dir)
    if exported:
        assert {"checkpoints/best.pt2", "checkpoints/best.json"} <= files, files
        files -= {"checkpoints/best.pt2", "checkpoints/best.json"}
    assert files == RUN_FILES, files
    rows = evaluations(run_dir)
    assert rows, "no evaluation in metrics.csv"
    for row in rows:
        assert {"val/loss", *TASK_METRICS[task]} <= set(row), row
        assert all(math.isfinite(value) for value in row.values()), row
    steps = [row["step"] for row in rows]
    assert steps == sorted(set(steps)), steps

    settings = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    monitor, _ = MONITOR[task]
    best = best_row(task, rows)
    baseline = read_baseline(run_dir)
    stopped, best_line, folder = printed.strip().splitlines()[-3:]
    reasons = {
        f"the step budget is spent ({settings['max_steps']} steps)",
        f"early stopping: {monitor} has not improved for {settings['patience']} evaluations",
        f"early stopping: {monitor} is past its stopping threshold "
        f"({settings['stopping_threshold']})",
    }
    assert stopped.startswith("stopped: ") and stopped[len("stopped: ") :] in reasons, stopped
    assert best_line.startswith("best (step "), best_line
    beside = f"{monitor} {best[monitor]:.4f} ({baseline['name']} {baseline[monitor]:.4f})"
    assert beside in best_line, (best_line, beside)
    assert folder.startswith("run folder: ")
    printed_dir = Path(cwd or Path.cwd(), folder.removeprefix("run folder: "))
    assert printed_dir.resolve() == run_dir.resolve(), folder
    return rows, best


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


@pytest.fixture(scope="session")
def default_run(installed_project):
    """default_run(task, framework): the cpu project trained as a user first trains it:
    `my-project train` in the project's folder, no flag. Once per test process: the tests
    that use it carry the xdist_group f"{task}-cpu" (test_train.cpu_group)."""
    done: dict[tuple[str, str], tuple] = {}

    def get(task: str, framework: str):
        if (task, framework) not in done:
            installed = installed_project({"task": task, "framework": framework, "hardware": "cpu"})
            result = installed.run("train", timeout=900)
            folder = result.stdout.strip().splitlines()[-1].removeprefix("run folder: ")
            done[task, framework] = installed, installed.project / folder, result
        return done[task, framework]

    return get


@pytest.fixture(scope="session")
def installed_project(template_copy, tmp_path_factory):
    """installed_project(combination, **answers): the project of that combination (and other
    answers, a list for extras), rendered and installed once per test process and shared by
    its tests.

    Tests that share one must not write into it: each gives train its own --output-dir.
    Mark them with the same xdist_group, so that one test process owns the project.
    """
    cache: dict[tuple, Installed] = {}
    root = tmp_path_factory.mktemp("installed")

    def get(combination: dict[str, str], **answers: str | list[str]) -> Installed:
        """A list answer (extras=["sweeps", "folds"]) is given to Copier as a list."""
        given = {k: v if isinstance(v, str) else "-".join(v) for k, v in answers.items()}
        key = (combination_id(combination), *sorted(given.items()))
        if key not in cache:
            name = "-".join([package_of(combination).replace("_", "-"), *given.values()])
            project = render(
                template_copy, root / name / "project", project_name=name, **combination, **answers
            )
            cache[key] = install(project, root / name / "venv")
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """tiny_models(installed, task): {name: folder} of the tiny stand-ins of hub models for
    the pretrained projects of the task (tests/tiny_models.py), built once per test process
    in the venv of one of them (`installed`), whose built-in data gives their vocabulary."""
    built: dict[str, dict[str, Path]] = {}

    def get(installed: Installed, task: str) -> dict[str, Path]:
        if task not in built:
            out = tmp_path_factory.mktemp(f"tiny-{task}")
            script = [str(installed.python), str(REPO / "tests" / "tiny_models.py")]
            result = run([*script, installed.package, task, str(out)], cwd=installed.project)
            built[task] = {k: Path(v) for k, v in json.loads(result.stdout).items()}
        return built[task]

    return get


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slow tests first: under xdist the light ones then fill the gaps at the end.

    And keep `--dist loadgroup` grouping by xdist_group under pytest 9.2: pytest-xdist 3.8
    (in its workers) appends "@group" to a test's node id, which is how its scheduler groups
    tests, but pytest 9.2 keeps node ids in a structured `_id` that ignores that change, so
    the groups silently vanish (pytest-dev/pytest-xdist#1386). This makes the same change
    where pytest 9.2 reads it; where xdist's own change worked, it does nothing.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
    if not config.getoption("loadgroup", False):  # set in xdist workers only
        return
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest before 9.2: xdist's own change works
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
            for mark in item.iter_markers("xdist_group")
        }
        if names and "@" not in item.nodeid.rpartition("]")[2]:
            item._id = NodeId.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")
