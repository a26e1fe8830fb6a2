"""What a user receives, measured: the size of each default project, the share of it that is
the user's own code, what the two styles differ by, the size of each extra, and the way the
project's layers import each other (issue 25's budgets)."""

from __future__ import annotations

import ast
import filecmp
import re
from pathlib import Path

import pytest
from conftest import TASKS, render

# Python lines under src/ of `scaffold new P --task T --framework F --defaults`.
LIGHTNING_BUDGET = {"image-classification": 1800}
RAW_BUDGET = {"image-classification": 2300}
USER_FILES = ("config.py", "data.py", "model.py")
PRETRAINED_TASKS = ("image-classification", "text-classification", "language-modeling")
TRACKERS = ("tensorboard", "mlflow", "wandb")


def lines_under_src(project: Path) -> dict[str, int]:
    """Lines of each Python file under src/<package>/, by its path there."""
    (package,) = (project / "src").iterdir()
    return {
        str(path.relative_to(package)): len(path.read_text().splitlines())
        for path in sorted(package.rglob("*.py"))
    }


@pytest.fixture(scope="module")
def rendered(template_copy, tmp_path_factory):
    """rendered(task, framework, **answers): a project, rendered once, named `budget`."""
    made: dict[tuple, Path] = {}
    root = tmp_path_factory.mktemp("budget")

    def get(task: str, framework: str, **answers) -> Path:
        key = (task, framework, *sorted((k, str(v)) for k, v in answers.items()))
        if key not in made:
            dest = root / str(len(made))
            made[key] = render(
                template_copy,
                dest,
                project_name="budget",
                task=task,
                framework=framework,
                **answers,
            )
        return made[key]

    return get


@pytest.mark.parametrize("task", TASKS)
def test_default_projects_stay_within_their_budgets(task, rendered):
    sizes = {}
    for framework in ("lightning", "raw"):
        files = lines_under_src(rendered(task, framework))
        total, user = sum(files.values()), sum(files[name] for name in USER_FILES)
        sizes[framework] = total
        share = user / total
        print(f"{task} {framework}: {total} lines, the user's files {user} ({share:.0%})")
        # The default image project (Lightning) is mostly the user's; every other, a quarter.
        default = task == "image-classification" and framework == "lightning"
        assert share >= (0.35 if default else 0.25), files
    assert sizes["lightning"] <= LIGHTNING_BUDGET.get(task, 2200), sizes
    assert sizes["raw"] <= RAW_BUDGET.get(task, 2700), sizes


@pytest.mark.parametrize("task", TASKS)
def test_the_two_styles_differ_by_the_engine_alone(task, rendered):
    """diff -r of the two styles: engine.py, the dependencies and the README's words; the
    raw engine holds at least twice the lines of Lightning's (the boilerplate it removes)."""
    lightning, raw = rendered(task, "lightning"), rendered(task, "raw")
    differ = sorted(differences(filecmp.dircmp(lightning, raw)))
    assert differ == [".copier-answers.yml", "README.md", "pyproject.toml", "src/budget/engine.py"]
    sizes = {
        style: lines_under_src(project)["engine.py"]
        for style, project in (("lightning", lightning), ("raw", raw))
    }
    print(f"{task}: engine.py {sizes}")
    assert sizes["raw"] >= 2 * sizes["lightning"], sizes
    assert sizes["raw"] <= 450, sizes


def differences(comparison: filecmp.dircmp, prefix: str = "") -> list[str]:
    found = [prefix + name for name in comparison.left_only + comparison.right_only]
    found += [prefix + name for name in comparison.diff_files]
    for name, sub in comparison.subdirs.items():
        found += differences(sub, f"{prefix}{name}/")
    return found


@pytest.mark.parametrize("framework", ["lightning", "raw"])
def test_each_extra_adds_at_most_a_thousand_lines(framework, rendered):
    task = "image-classification"
    default = sum(lines_under_src(rendered(task, framework)).values())
    variants = {extra: {"extras": [extra]} for extra in ("sweeps", "folds", "slurm")}
    variants |= {tracker: {"logger": tracker} for tracker in TRACKERS}
    variants["everything"] = {"extras": ["sweeps", "folds", "slurm"], "logger": "mlflow"}
    for name, answers in variants.items():
        size = sum(lines_under_src(rendered(task, framework, **answers)).values())
        print(f"{framework} + {name}: {size - default:+d} lines")
        assert size - default <= 1000, (name, size, default)


@pytest.mark.parametrize("task", PRETRAINED_TASKS)
def test_a_pretrained_backbone_adds_at_most_four_hundred_lines(task, rendered):
    for framework in ("lightning", "raw"):
        scratch = sum(lines_under_src(rendered(task, framework)).values())
        pretrained = sum(lines_under_src(rendered(task, framework, backbone="pretrained")).values())
        print(f"{task} {framework}: pretrained {pretrained - scratch:+d} lines")
        assert pretrained - scratch <= 400, (scratch, pretrained)


def module_name(path: Path, source: Path) -> str:
    """plumbing/runs.py -> plumbing.runs; plumbing/__init__.py -> plumbing."""
    parts = path.relative_to(source).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, source: Path) -> set[str]:
    """The project's own modules (and names in them) that a module imports, anywhere in it,
    as dotted names under the package: {"plumbing.runs", "config", "config.Config", ...}."""
    package = list(path.relative_to(source).parts[:-1])  # the package the module is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            target = package[: len(package) - node.level + 1]
            target += node.module.split(".") if node.module else []
            found.add(".".join(target))
            found |= {".".join([*target, alias.name]) for alias in node.names}
    return {name for name in found if name}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("framework", ["lightning", "raw"])
def test_layers_import_one_way(task, framework, rendered):
    """The user's files import nothing of the machinery (nor the engine); the machinery
    imports none of the user's files; the engine and the command line compose both."""
    # Every extra (folds split the text's end of a language model alone: refused there).
    extras = ["sweeps", "slurm"] + ([] if task == "language-modeling" else ["folds"])
    source = rendered(task, framework, extras=extras, logger="mlflow") / "src" / "budget"
    modules = {module_name(path, source): path for path in source.rglob("*.py")}
    graph = {
        name: (imports_of(path, source) & set(modules)) - {name} for name, path in modules.items()
    }
    user = {"config", "data", "model"}
    for name in user:
        assert not {m for m in graph[name] if m.startswith("plumbing") or m in ("engine", "cli")}
    for name, imported in graph.items():
        if name.startswith("plumbing"):
            assert not imported & (user | {"engine", "cli"}), (name, imported)
    # No cycle: a module never imports, through others, itself.
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            assert name != start, f"{start} imports itself through {seen}"
            if name not in seen:
                seen.add(name)
                todo += graph[name]


@pytest.mark.parametrize("framework", ["lightning", "raw"])
def test_the_learning_rate_crosses_at_most_four_files(framework, rendered):
    """From `--lr` to the optimizer: the files that name the setting train.lr."""
    source = rendered("image-classification", framework) / "src" / "budget"
    pattern = re.compile(r"\btrain\.lr\b|\bt\.lr\b|\.train\.lr\b|^\s+lr: float", re.MULTILINE)
    naming = sorted(
        str(path.relative_to(source))
        for path in source.rglob("*.py")
        if pattern.search(path.read_text())
    )
    print(naming)
    assert len(naming) <= 4, naming
