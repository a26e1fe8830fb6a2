"""Answers full of quotes, backslashes, emoji and Jinja still give a project that parses."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import TASKS, render, run

HOSTILE = {
    "project_name": 'Ünïcode "Quoted" Project 🚀',
    "description": 'It\'s a "test" with \\backslashes\\, {{ 7 * 7 }}, {% raw %} and 😀 """',
    "author_name": 'O\'Brien "Bob" \\ Ł',
    "author_email": "bob+tag@example.co.uk",
}


@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_hostile_answers_still_parse_and_are_kept_verbatim(framework, template_copy, tmp_path):
    project = render(template_copy, tmp_path / "project", framework=framework, **HOSTILE)
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["package_name"] == "n_code_quoted_project"
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert metadata["name"] == "n-code-quoted-project"
    assert metadata["description"] == HOSTILE["description"]  # Jinja text not evaluated
    assert metadata["authors"] == [
        {"name": HOSTILE["author_name"], "email": HOSTILE["author_email"]}
    ]
    for path in project.rglob("*.py"):
        compile(path.read_text(), str(path), "exec")
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project)
    run([sys.executable, "-m", "black", "--check", "--quiet", "."], cwd=project)
    assert HOSTILE["project_name"] in (project / "README.md").read_text()
    assert HOSTILE["author_name"] in (project / "LICENSE").read_text()

    assert HOSTILE["description"] in (project / "README.md").read_text()
    result = subprocess.run(
        [sys.executable, "-m", "n_code_quoted_project", "--help"],
        cwd=project,
        env={"PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "n-code-quoted-project: train, evaluate" in result.stdout


@pytest.mark.parametrize("framework", ["raw", "lightning"])
@pytest.mark.parametrize("task", TASKS)
def test_the_longest_package_name_still_gives_black_and_ruff_clean_code(
    task, framework, template_copy, tmp_path
):
    # Long import lines are where a long name shows: black would re-wrap them.
    name = "a_project_name_of_the_longest_kind_allowed"[:40]
    project = render(
        template_copy,
        tmp_path / "project",
        task=task,
        framework=framework,
        hardware="multi-gpu",
        project_name=name.replace("_", " ").title() + " With A Longer Human Name",
        package_name=name,
    )
    assert (project / "src" / name / "engine.py").is_file()
    run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=project)
    run([sys.executable, "-m", "black", "--check", "--quiet", "."], cwd=project)


def test_python_keywords_list_holds_every_keyword():
    import keyword

    from generator.questions import template_root

    spec = yaml.safe_load((template_root() / "copier.yml").read_text())
    assert set(spec["python_keywords"]["default"].split()) == set(keyword.kwlist)
    public = {name for name in sys.stdlib_module_names if not name.startswith("_")}
    assert public <= set(spec["reserved_package_names"]["default"].split())
