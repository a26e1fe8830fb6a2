"""The wheel carries the template; Copier works from a checkout path and from a git URL."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, git, make_template_repo, make_venv, run

from generator import __version__
from generator.project import TEMPLATE_URL_ENV, release_tag
from generator.questions import template_root

TAG = f"v{__version__}"
# The installed command must not see this checkout's `generator` on PYTHONPATH.
ONLY_THE_WHEEL = {"PYTHONPATH": ""}


def tracked_template_files() -> set[str]:
    listed = run(["git", "ls-files", "-z", "copier.yml", "template"], cwd=REPO).stdout
    return set(listed.split("\0")) - {""}


@pytest.fixture(scope="module")
def wheel_template(tmp_path_factory) -> Path:
    """The released template: a tagged clone, and a wheel built from it."""
    root = tmp_path_factory.mktemp("release")
    return make_template_repo(root / "torch-scaffold", TAG)


@pytest.fixture(scope="module")
def installed_scaffold(wheel_template, tmp_path_factory) -> Path:
    """`scaffold` installed from the wheel into a fresh venv: the path to the command."""
    root = tmp_path_factory.mktemp("wheel")
    run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(root)],
        cwd=wheel_template,
        timeout=300,
    )
    (wheel,) = root.glob("torch_scaffold-*.whl")
    assert wheel.name.startswith(f"torch_scaffold-{__version__}-")  # the release's version
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    bundled = {
        name.removeprefix("generator/_template/")
        for name in names
        if name.startswith("generator/_template/")
    }
    assert tracked_template_files() <= bundled  # dotfiles and partials included
    python = make_venv(root / "venv")
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-index", "--no-deps", "--force-reinstall", str(wheel)],
        timeout=300,
    )
    return python.parent / "scaffold"


def test_the_wheel_installs_and_generates_from_anywhere(installed_scaffold, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run(
        [
            str(installed_scaffold),
            "new",
            "made-by-wheel",
            "--defaults",
            "--task",
            "language-modeling",
        ],
        cwd=elsewhere,
        env=ONLY_THE_WHEEL,
    )
    assert "Generated made-by-wheel" in result.stdout
    project = elsewhere / "made-by-wheel"
    assert (project / "src/made_by_wheel/model.py").read_text().count("class GPT(") == 1
    # Not the site-packages copy it was rendered from: the public template, at this release.
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    metadata = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert recorded["_src_path"] == metadata["urls"]["Source"]
    assert recorded["_commit"] == TAG
    python = installed_scaffold.parent / "python"
    location = run(
        [str(python), "-c", "import generator.questions as q; print(q.template_root())"],
        cwd=elsewhere,
        env=ONLY_THE_WHEEL,
    ).stdout.strip()
    assert "site-packages" in location and location.endswith("_template")


def test_a_project_made_from_the_wheel_updates_from_its_recorded_url(
    installed_scaffold, wheel_template, tmp_path, monkeypatch
):
    monkeypatch.setenv("COPIER_CACHE_DIR", str(tmp_path / "copier-cache"))
    url = f"git+file://{wheel_template}"  # stands for the public URL: nothing is downloaded
    made = run(
        [str(installed_scaffold), "new", "proj", "--task", "text-classification"],
        cwd=tmp_path,
        env={**ONLY_THE_WHEEL, TEMPLATE_URL_ENV: url},
    )
    assert "Generated proj" in made.stdout
    project = tmp_path / "proj"
    recorded = yaml.safe_load((project / ".copier-answers.yml").read_text())
    assert (recorded["_src_path"], recorded["_commit"]) == (url, TAG)
    config = project / "configs" / "default.yaml"
    config.write_text(re.sub(r"batch_size: \d+", "batch_size: 48", config.read_text()))
    git("commit", "--quiet", "-am", "our settings", cwd=project)

    next_tag = f"{TAG}.1"
    gitignore = wheel_template / "template" / ".gitignore"
    gitignore.write_text(gitignore.read_text() + "wandb/\n")
    git("commit", "--quiet", "-am", "next release", cwd=wheel_template)
    git("tag", next_tag, cwd=wheel_template)

    run([str(installed_scaffold), "update"], cwd=project, env=ONLY_THE_WHEEL)
    assert "wandb/" in (project / ".gitignore").read_text()
    assert "batch_size: 48" in config.read_text()
    assert yaml.safe_load((project / ".copier-answers.yml").read_text())["_commit"] == next_tag
    assert not list(project.rglob("*.rej"))


def copier_copy(source: str, dest, *args: str) -> None:
    run(
        [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet", *args, source, str(dest)],
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_copier_copy_from_a_path_and_a_git_url_give_the_same_project(tmp_path, monkeypatch):
    monkeypatch.setenv("COPIER_CACHE_DIR", str(tmp_path / "copier-cache"))
    # A clone holds what is committed; the checkout may have uncommitted changes.
    clone = tmp_path / "clone"
    run(["git", "clone", "--quiet", str(REPO), str(clone)])
    data = ["--data", "task=tabular-regression", "--data", "framework=raw"]
    data += ["--data", "project_name=same"]  # not each folder's name
    copier_copy(str(clone), tmp_path / "from-path", *data)
    copier_copy(f"git+file://{clone}", tmp_path / "from-url", *data)

    def files(root):
        return {
            str(p.relative_to(root)): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and p.name != ".copier-answers.yml"
        }

    from_path, from_url = files(tmp_path / "from-path"), files(tmp_path / "from-url")
    assert from_path == from_url
    assert "src/same/engine.py" in from_path
    assert template_root() == REPO


def test_the_release_tag_is_one_copier_takes_as_this_version():
    from packaging.version import InvalidVersion, Version

    assert release_tag() == TAG == f"v{__version__}"
    version = Version(TAG)  # Copier reads tags as PEP 440 versions: the v is allowed
    assert version == Version(__version__)
    assert not version.is_prerelease and not version.is_devrelease  # Copier skips those
    assert not version.local
    # A release tag of this repository, where there is one, never runs ahead of the code.
    if (REPO / ".git").exists():
        releases = []
        for tag in run(["git", "tag", "--list", "v*"], cwd=REPO).stdout.split():
            try:
                releases.append(Version(tag))
            except InvalidVersion:  # not a release: Copier ignores it too
                continue
        assert all(release <= version for release in releases), releases
