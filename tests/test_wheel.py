"""The wheel carries the template; Copier works from a checkout path and from a git URL."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import yaml
from conftest import REPO, make_venv, run

from generator.questions import template_root


def tracked_template_files() -> set[str]:
    listed = run(["git", "ls-files", "-z", "copier.yml", "template"], cwd=REPO).stdout
    return set(listed.split("\0")) - {""}


def test_the_wheel_installs_and_generates_from_anywhere(tmp_path):
    run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=REPO,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("torch_scaffold-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    bundled = {
        name.removeprefix("generator/_template/")
        for name in names
        if name.startswith("generator/_template/")
    }
    assert tracked_template_files() <= bundled  # dotfiles and partials included

    python = make_venv(tmp_path / "venv")
    run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
        + ["--no-index", "--no-deps", "--force-reinstall", str(wheel)],
        timeout=300,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    scaffold = python.parent / "scaffold"
    result = run(
        [str(scaffold), "new", "made-by-wheel", "--defaults", "--task", "language-modeling"],
        cwd=elsewhere,
    )
    assert "Generated made-by-wheel" in result.stdout
    project = elsewhere / "made-by-wheel"
    assert (project / "src/my_project/model.py").read_text().count("CharTransformer") >= 2
    source = yaml.safe_load((project / ".copier-answers.yml").read_text())["_src_path"]
    assert "site-packages" in source and source.endswith("_template")  # not the checkout
    location = run(
        [str(python), "-c", "import generator.questions as q; print(q.template_root())"],
        cwd=elsewhere,
    ).stdout.strip()
    assert location == source


def copier_copy(source: str, dest, *args: str) -> None:
    run(
        [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet", *args, source, str(dest)],
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_copier_copy_from_a_path_and_a_git_url_give_the_same_project(tmp_path):
    # A clone holds what is committed; the checkout may have uncommitted changes.
    clone = tmp_path / "clone"
    run(["git", "clone", "--quiet", str(REPO), str(clone)])
    data = ["--data", "task=tabular-regression", "--data", "framework=raw"]
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
    assert "src/my_project/engine.py" in from_path
    assert template_root() == REPO
