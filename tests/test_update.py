"""`copier update` brings a new template version into a generated project, keeping edits."""

from __future__ import annotations

import shutil

import yaml
from conftest import run

from generator.questions import template_root


def git(*args: str, cwd) -> str:
    return run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd).stdout


def test_update_keeps_the_users_edits(tmp_path):
    from copier import run_copy, run_update

    template = tmp_path / "template-repo"
    template.mkdir()
    shutil.copy(template_root() / "copier.yml", template)
    shutil.copytree(template_root() / "template", template / "template")
    git("init", "--quiet", cwd=template)
    git("add", "-A", cwd=template)
    git("commit", "--quiet", "-m", "v1", cwd=template)
    git("tag", "v1", cwd=template)

    project = tmp_path / "project"
    run_copy(str(template), project, data={"task": "text-classification"}, defaults=True)
    git("init", "--quiet", cwd=project)
    git("add", "-A", cwd=project)
    git("commit", "--quiet", "-m", "generated", cwd=project)
    # The user's own work: a changed default and a new section in the README.
    config = project / "configs" / "default.yaml"
    config.write_text(config.read_text().replace("epochs: 10", "epochs: 25"))
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\n## Our results\n\n92% on the team's data.\n")
    git("commit", "--quiet", "-am", "our settings", cwd=project)

    # The template moves on: a new line in .gitignore, and a new comment in default.yaml.
    gitignore = template / "template" / ".gitignore"
    gitignore.write_text(gitignore.read_text() + "wandb/\n")
    default = template / "template" / "configs" / "default.yaml.jinja"
    default.write_text(default.read_text() + "# tuned on 2026-11-27\n")
    git("commit", "--quiet", "-am", "v2", cwd=template)
    git("tag", "v2", cwd=template)

    run_update(project, defaults=True, overwrite=True, unsafe=False, quiet=True)

    assert "wandb/" in (project / ".gitignore").read_text()
    updated = config.read_text()
    assert "epochs: 25" in updated and "# tuned on 2026-11-27" in updated
    assert "92% on the team's data." in readme.read_text()
    answers = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert answers["_commit"] == "v2"
    assert answers["task"] == "text-classification"
