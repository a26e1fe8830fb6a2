"""Every task x framework x hardware combination renders into clean, formatted, valid code."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import subprocess
import sys
import tomllib

import jinja2
import pytest
import yaml
from conftest import (
    COMBINATIONS,
    combination_id,
    default_settings,
    package_of,
    render_combination,
    run,
)
from packaging.requirements import Requirement

from generator.questions import template_root

TEMPLATE = template_root() / "template"
# One test process renders the 32 projects (the `projects` fixture) and checks them all.
pytestmark = pytest.mark.xdist_group("render")


def expected_files(combination: dict[str, str]) -> set[str]:
    """The exact file set of a generated project (license MIT, the default)."""
    package = f"src/{package_of(combination)}"
    files = {
        ".copier-answers.yml",
        ".github/workflows/ci.yml",
        ".gitignore",
        ".pre-commit-config.yaml",
        "LICENSE",
        "README.md",
        "configs/default.yaml",
        "pyproject.toml",
        "tests/test_data.py",
        "tests/test_project.py",
    }
    # What the user edits, in front (config, data, model), with the one file that differs
    # between the styles (engine) and the command line; the machinery behind, in plumbing/,
    # the same in both styles.
    front = ("__init__", "__main__", "cli", "config", "data", "engine", "model")
    files |= {f"{package}/{name}.py" for name in front}
    machinery = ["__init__", "reporting", "runs", "settings", "training"]
    files |= {f"{package}/plumbing/{name}.py" for name in machinery}
    if combination["backbone"] == "pretrained":  # loading the hub model; a tiny stand-in
        files |= {f"{package}/pretrained.py", "tests/tiny_model.py"}
    # The extras (the default answer: slurm for multi-gpu, else none): no sweep, no folds.
    if combination["hardware"] == "multi-gpu":
        files.add("scripts/slurm.sbatch")
    return files


@pytest.fixture(scope="module")
def projects(template_copy, tmp_path_factory):
    """Every combination, rendered once for this module."""
    root = tmp_path_factory.mktemp("rendered")
    return {
        combination_id(c): render_combination(template_copy, root / combination_id(c), c)
        for c in COMBINATIONS
    }


def test_the_matrix_is_every_combination_of_copier_yml():
    spec = yaml.safe_load((template_root() / "copier.yml").read_text())
    sizes = [len(spec[axis]["choices"]) for axis in ("task", "framework", "hardware")]
    assert sizes[0] * sizes[1] * sizes[2] == 32
    scratch = [c for c in COMBINATIONS if c["backbone"] == "scratch"]
    pretrained = [c for c in COMBINATIONS if c["backbone"] == "pretrained"]
    # Every task from scratch; every task but tabular regression also pretrained.
    assert len(scratch) == 32 and len(pretrained) == 24
    tasks = {"image-classification", "text-classification", "language-modeling"}
    assert {c["task"] for c in pretrained} == tasks
    assert len({combination_id(c) for c in COMBINATIONS}) == len(COMBINATIONS) == 56


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_renders_exactly_its_own_files(combination, projects):
    project = projects[combination_id(combination)]
    files = {str(p.relative_to(project)) for p in project.rglob("*") if p.is_file()}
    assert files == expected_files(combination)

    package = project / "src" / package_of(combination)
    # The task's and the engine's partials, and no other, went in verbatim (the scratch
    # partials' block tags aside: the pretrained variants replace those blocks), with the
    # shared ones: data.py holds the split, model.py ends with the optimizer.
    task = f"template/_tasks/{combination['task']}"
    pretrained = combination["backbone"] == "pretrained"
    data = (package / "data.py").read_text()
    assert (data == rendered(f"{task}/data.py", combination)) != pretrained
    # The language model holds out the end of its token stream instead of random rows.
    split = rendered("template/_shared/split.py", combination)
    assert (split in data) == (combination["task"] != "language-modeling")
    model = (package / "model.py").read_text()
    assert model.startswith(rendered(f"{task}/model.py", combination)) != pretrained
    assert model.endswith(rendered("template/_shared/optimizer.py", combination))
    framework = combination["framework"]
    engine = rendered(f"template/_engines/{framework}/engine.py", combination)
    assert (package / "engine.py").read_text() == engine
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert any(d.startswith("lightning") for d in dependencies) == (framework == "lightning")
    assert any(d.startswith("pillow") for d in dependencies) == (
        combination["task"] == "image-classification"
    )
    # transformers for a pretrained backbone only: scratch projects have no new dependency.
    assert any(d.startswith("transformers") for d in dependencies) == pretrained
    # What `pip install -e .` resolves, and the tests' installs skip (--no-deps, seconds
    # faster): this environment holds a version of each dependency that satisfies it.
    for dependency in map(Requirement, dependencies):
        if dependency.marker is None or dependency.marker.evaluate():
            installed = importlib.metadata.version(dependency.name)
            assert dependency.specifier.contains(installed, prereleases=True), (
                dependency,
                installed,
            )


def rendered(partial: str, answers: dict[str, str]) -> str:
    """A partial (a path from the template's root, where Copier's Jinja loader looks) as
    Copier renders it with these answers (the Jinja settings of copier.yml): a partial whose
    blocks no child template replaces keeps their contents, without the block tags."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(template_root()),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    defaults = {"logger": "csv", "extras": ["slurm"] if answers["hardware"] == "multi-gpu" else []}
    return environment.get_template(partial).render(**{**defaults, **answers})


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_output_is_valid_and_clean(combination, projects):
    project = projects[combination_id(combination)]
    for path in project.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "{{" not in text and "{%" not in text, f"Jinja left in {path}"
            if path.suffix == ".py":
                compile(text, str(path), "exec")
            if path.suffix in (".yml", ".yaml"):
                yaml.safe_load(text)
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {
        package_of(combination).replace("_", "-"): f"{package_of(combination)}.cli:main"
    }
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project)
    run([sys.executable, "-m", "black", "--check", "--quiet", "."], cwd=project)


@pytest.mark.parametrize("combination", COMBINATIONS, ids=combination_id)
def test_default_yaml_lists_every_setting_with_the_code_defaults(combination, projects):
    project = projects[combination_id(combination)]
    package = package_of(combination)
    path = project / "src" / package / "config.py"
    spec = importlib.util.spec_from_file_location(f"{package}_config", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    defaults = dataclasses.asdict(module.Config())
    # Commented out, since config.py is the one source of the defaults: uncommented, each
    # line gives back its default.
    assert default_settings(project) == defaults
    commented = yaml.safe_load((project / "configs" / "default.yaml").read_text())
    assert all(value is None for value in commented.values()), commented
    hardware = combination["hardware"]
    assert defaults["train"]["accelerator"] == {"multi-gpu": "gpu"}.get(hardware, hardware)
    assert defaults["train"]["devices"] == (-1 if hardware == "multi-gpu" else 1)


def test_generated_help_does_not_import_torch(projects):
    project = projects[combination_id(COMBINATIONS[0])]
    code = (
        "import sys; sys.argv = ['x', '--help']\n"
        f"from {package_of(COMBINATIONS[0])}.cli import app\n"
        "try:\n    app()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env={"PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "predict" in result.stdout
