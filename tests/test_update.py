"""A project's life: template changes reach it by `copier update` or `scaffold update`, from
every kind of source, keeping the user's edits; conflicts are shown; the framework switches."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import (
    CHECKOUT_FILES,
    REPO,
    git,
    install,
    make_template_repo,
    render,
    run,
    scaffold_from,
)

from generator import __version__
from generator.project import conflict_markers

# How long a generated project trains in these tests: as little as possible.
SHORT = ["--accelerator", "cpu", "--max-steps", "5"]
TAG = f"v{__version__}"
NEXT_TAG = f"v{__version__}.1"


def git_status(project) -> str:
    return git("status", "--porcelain", cwd=project)


def answers(project) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


def commit_all(cwd, message: str) -> None:
    git("add", "--all", cwd=cwd)
    git("commit", "--quiet", "-m", message, cwd=cwd)


def edit_project(project) -> None:
    """The user's own work: a changed setting and a new README section."""
    config = project / "configs" / "default.yaml"
    text, count = re.subn(r"batch_size: \d+", "batch_size: 48", config.read_text())
    assert count == 1
    config.write_text(text)
    readme = project / "README.md"
    readme.write_text(readme.read_text() + "\n## Our results\n\n92% on the team's data.\n")
    commit_all(project, "our settings")


def release_a_change(template) -> None:
    """The template moves on, away from the user's edits: the next release."""
    gitignore = template / "template" / ".gitignore"
    gitignore.write_text(gitignore.read_text() + "wandb/\n")
    default = template / "template" / "configs" / "default.yaml.jinja"
    default.write_text(default.read_text() + "# tuned on 2026-11-27\n")
    commit_all(template, "next release")
    git("tag", NEXT_TAG, cwd=template)


def assert_updated(project) -> None:
    assert "wandb/" in (project / ".gitignore").read_text()  # the template's change arrived
    config = (project / "configs" / "default.yaml").read_text()
    assert "# tuned on 2026-11-27" in config
    assert "batch_size: 48" in config  # the user's edits survived
    assert "92% on the team's data." in (project / "README.md").read_text()
    assert answers(project)["_commit"] == NEXT_TAG
    assert not list(project.rglob("*.rej"))


@pytest.fixture
def template(tmp_path):
    return make_template_repo(tmp_path / "torch-scaffold", TAG)


@pytest.fixture
def work(tmp_path, monkeypatch):
    """Where the user works; Copier's cache of remote templates stays in the test's folder."""
    monkeypatch.setenv("COPIER_CACHE_DIR", str(tmp_path / "copier-cache"))
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def test_update_from_the_checkout_scaffold_new_ran_from(template, work):
    made = scaffold_from(template, "new", "proj", cwd=work)
    assert made.returncode == 0, made.stderr
    project = work / "proj"
    assert answers(project)["_src_path"] == str(template)
    assert answers(project)["_commit"] == TAG
    edit_project(project)
    release_a_change(template)

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert result.returncode == 0, result.stderr
    assert_updated(project)
    assert "review them with `git diff`, then commit" in result.stdout


def test_update_from_a_relative_checkout_path_works_from_inside_the_project(template, work):
    # `copier copy ../torch-scaffold sub/proj`: a path relative to where copy ran.
    run(
        [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet"]
        + ["../torch-scaffold", "sub/proj"],
        cwd=work,
        stdin=subprocess.DEVNULL,
    )
    project = work / "sub" / "proj"
    assert answers(project)["_src_path"] == "../../../torch-scaffold"  # from the project
    git("init", "--quiet", cwd=project)
    commit_all(project, "generated")
    edit_project(project)
    release_a_change(template)

    result = scaffold_from(template, "update", cwd=project)  # PROJECT defaults to here
    assert result.returncode == 0, result.stderr
    assert_updated(project)


def test_update_from_a_git_url(template, work):
    run(
        [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet"]
        + [f"git+file://{template}", "proj"],
        cwd=work,
        stdin=subprocess.DEVNULL,
    )
    project = work / "proj"
    assert answers(project)["_commit"] == TAG
    git("init", "--quiet", cwd=project)
    commit_all(project, "generated")
    edit_project(project)
    release_a_change(template)

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert result.returncode == 0, result.stderr
    assert_updated(project)


def test_plain_copier_update_keeps_the_users_edits(template, work):
    from copier import run_copy, run_update

    project = work / "project"
    run_copy(str(template), project, data={"task": "text-classification"}, defaults=True)
    git("init", "--quiet", cwd=project)
    commit_all(project, "generated")
    edit_project(project)
    release_a_change(template)

    run_update(project, defaults=True, overwrite=True, unsafe=False, quiet=True)
    assert_updated(project)
    assert answers(project)["task"] == "text-classification"


def test_an_overlapping_edit_is_a_named_conflict_that_training_reports(template, work):
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    config = project / "configs" / "default.yaml"
    config.write_text(config.read_text() + "# ours: keep the batch small\n")
    commit_all(project, "our note")
    default = template / "template" / "configs" / "default.yaml.jinja"
    default.write_text(default.read_text() + "# theirs: tuned on 2026-11-27\n")
    commit_all(template, "next release")
    git("tag", NEXT_TAG, cwd=template)

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert result.returncode == 1, result.stdout + result.stderr
    text = config.read_text()
    assert "# ours: keep the batch small" in text and "# theirs: tuned on 2026-11-27" in text
    line = next(n for n, s in enumerate(text.splitlines(), start=1) if s.startswith("<<<<<<<"))
    assert f"conflict: configs/default.yaml (line {line}: <<<<<<<" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 file(s) hold conflict markers") and "then commit" in last
    assert "Traceback" not in result.stderr

    # The project's own config reader names the file, the line and the fix.
    read = subprocess.run(
        [
            sys.executable,
            "-c",
            "from pathlib import Path\n"
            "from proj.config import Config\n"
            "from proj.plumbing.settings import load_config\n"
            "load_config(Config, [Path('configs/default.yaml')])",
        ],
        cwd=project,
        env={"PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
    )
    assert read.returncode != 0
    assert (
        f"configs/default.yaml has unresolved merge conflict markers (line {line}); resolve them"
        in read.stderr
    )


def test_a_dirty_template_checkout_renders_its_last_commit_and_the_project_updates(template, work):
    gitignore = template / "template" / ".gitignore"
    gitignore.write_text(gitignore.read_text() + "dirty/\n")  # not committed

    made = scaffold_from(template, "new", "proj", cwd=work)
    assert made.returncode == 0, made.stderr
    assert "has uncommitted changes (template/.gitignore)" in made.stderr
    assert "without them" in made.stderr
    project = work / "proj"
    assert "dirty/" not in (project / ".gitignore").read_text()
    assert answers(project)["_commit"] == TAG  # a commit that exists

    commit_all(template, "dirty/ ignored")
    git("tag", NEXT_TAG, cwd=template)
    result = scaffold_from(template, "update", "proj", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "dirty/" in (project / ".gitignore").read_text()
    assert answers(project)["_commit"] == NEXT_TAG


def test_a_commit_that_the_checkout_lacks_is_one_line(template, work):
    # What a project made by plain `copier copy` of a dirty checkout's HEAD recorded before
    # copier.yml refused it: a commit of Copier's temporary clone.
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    recorded = answers(project)
    recorded["_commit"] = "0123456789abcdef0123456789abcdef01234567"
    (project / ".copier-answers.yml").write_text(yaml.safe_dump(recorded))
    commit_all(project, "made from a draft")

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "which" in result.stderr and "does not have" in result.stderr
    assert "set _commit in .copier-answers.yml" in result.stderr


def copier_copy(*args: str, cwd) -> subprocess.CompletedProcess:
    """Plain `copier copy --defaults --quiet ARGS` (exit code unchecked)."""
    return run(
        [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet", *args],
        cwd=cwd,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("case", ["--vcs-ref HEAD", "no release tag"])
def test_copier_copy_of_a_dirty_checkout_is_refused_rather_than_recorded(case, template, work):
    # Copier would commit the changes in its temporary clone and record that commit, which
    # `copier update` cannot find later (ValueError: Unknown revision).
    gitignore = template / "template" / ".gitignore"
    gitignore.write_text(gitignore.read_text() + "dirty/\n")
    (template / "my-project").mkdir()  # a project made inside the clone: untracked files
    (template / "my-project" / "notes.txt").write_text("mine\n")
    if case == "no release tag":
        git("tag", "--delete", TAG, cwd=template)
        args = [str(template), "proj"]
    else:
        args = ["--vcs-ref", "HEAD", str(template), "proj"]

    result = copier_copy(*args, cwd=work)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert f"the template checkout {template} has uncommitted changes" in last, result.stderr
    assert f"without them: --vcs-ref $(git -C {template} rev-parse HEAD)" in last
    assert not (work / "proj").exists()

    head = git("rev-parse", "HEAD", cwd=template).strip()
    made = copier_copy("--vcs-ref", head, str(template), "proj", cwd=work)  # the way out
    assert made.returncode == 0, made.stderr
    assert "dirty/" not in (work / "proj" / ".gitignore").read_text()
    git("rev-parse", "--verify", answers(work / "proj")["_commit"], cwd=template)  # it exists


def test_copier_copy_of_a_dirty_tagged_checkout_takes_the_release(template, work):
    gitignore = template / "template" / ".gitignore"
    gitignore.write_text(gitignore.read_text() + "dirty/\n")
    result = run(
        [sys.executable, "-m", "copier", "copy", "--defaults", str(template), "proj"],
        cwd=work,
        stdin=subprocess.DEVNULL,
    )
    # Copier names the release, not a version like 0.0.0.post75.dev0+g1234abc.
    assert f"Copying from template version {__version__}\n" in result.stderr
    assert answers(work / "proj")["_commit"] == TAG
    assert "dirty/" not in (work / "proj" / ".gitignore").read_text()


@pytest.mark.parametrize("case", ["dirty", "not a project", "not a repository"])
def test_update_refuses_what_it_cannot_update_in_one_line(case, template, work):
    project = work / "proj"
    if case == "not a project":
        project.mkdir()
    else:
        git_flag = ["--no-git"] if case == "not a repository" else []
        assert scaffold_from(template, "new", "proj", *git_flag, cwd=work).returncode == 0
    if case == "dirty":
        (project / "notes.txt").write_text("mine")
        (project / "README.md").write_text("changed")

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    says = {
        "dirty": "has uncommitted changes (README.md, notes.txt); commit or stash them",
        "not a project": "has no .copier-answers.yml",
        "not a repository": "is not in a git repository",
    }
    assert says[case] in result.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_switching_the_framework_both_ways_keeps_the_users_code(template, work, tmp_path):
    made = scaffold_from(template, "new", "proj", "--task", "tabular-regression", cwd=work)
    assert made.returncode == 0, made.stderr
    project = work / "proj"
    src = project / "src" / "proj"
    # The user's own code and settings, in the files both engines share.
    with (src / "model.py").open("a") as file:
        file.write("\n\ndef our_model_helper() -> int:\n    return 42\n")
    with (src / "data.py").open("a") as file:
        file.write("\n\nOUR_DATA_NOTE = 'cleaned by us'\n")
    config = project / "configs" / "default.yaml"
    # The project's own default: the line uncommented, as its README says.
    config.write_text(re.sub(r"# batch_size: \d+", "batch_size: 48", config.read_text()))
    commit_all(project, "our model, data and settings")

    engines = {"lightning": (src / "engine.py").read_text()}
    for framework in ("raw", "lightning"):
        result = scaffold_from(template, "update", "proj", "--framework", framework, cwd=work)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"framework {'lightning' if framework == 'raw' else 'raw'} -> {framework}" in (
            result.stdout
        )
        assert answers(project)["framework"] == framework
        # Whether to reinstall: lightning is a dependency of one engine only.
        change = "+lightning>=2.4" if framework == "lightning" else "-lightning>=2.4"
        assert f"The dependencies changed ({change}): reinstall: pip install -e ." in (
            result.stdout
        )
        pyproject = (project / "pyproject.toml").read_text()
        assert ('"lightning>=' in pyproject) == (framework == "lightning")
        engines.setdefault(framework, (src / "engine.py").read_text())
        assert "def our_model_helper" in (src / "model.py").read_text()
        assert "OUR_DATA_NOTE = 'cleaned by us'" in (src / "data.py").read_text()
        assert "\n  batch_size: 48" in config.read_text()
        assert not list(project.rglob("*.rej"))
        commit_all(project, f"switched to {framework}")

        installed = install(project, tmp_path / f"venv-{framework}")
        # A few steps, then the project's own tests, in one process.
        (trained,) = installed.drive(["train", *SHORT, "--name", framework], pytest=True)
        trained.check()
        assert (project / "runs" / framework / "checkpoints" / "last.ckpt").is_file()
    assert engines["raw"] != engines["lightning"]
    assert (src / "engine.py").read_text() == engines["lightning"]  # back where it started


def test_a_project_that_records_no_template_version_is_one_line(template, work):
    # What a project made from the wheel by an older `scaffold` records: a site-packages path.
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    recorded = answers(project)
    del recorded["_commit"]
    recorded["_src_path"] = "/venv/lib/python3.11/site-packages/generator/_template"
    (project / ".copier-answers.yml").write_text(yaml.safe_dump(recorded))
    commit_all(project, "as an older scaffold made it")

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "does not say which template version made the project" in result.stderr
    assert "_commit" in result.stderr


def assert_one_line(result, *says: str) -> None:
    """A refusal the user can fix: exit code 2, one line, no traceback."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for text in says:
        assert text in result.stderr, result.stderr


@pytest.mark.parametrize(
    "name, value, says",
    [
        ("package_name", "class", "'class' is a Python keyword"),
        ("hardware", "tpu", "'tpu' is not in ['cpu', 'gpu', 'multi-gpu', 'mps']"),
    ],
)
def test_a_bad_answer_in_the_answers_file_is_blamed_on_that_file(name, value, says, template, work):
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    recorded = answers(project)
    recorded[name] = value  # edited by hand
    (project / ".copier-answers.yml").write_text(yaml.safe_dump(recorded))
    commit_all(project, "edited by hand")

    result = scaffold_from(template, "update", "proj", cwd=work)
    # The version that made the project refuses it too: no flag can help, the file must change.
    assert_one_line(result, f"{name} in proj/.copier-answers.yml: {says}", f"fix {name} there")
    assert "--name" not in result.stderr
    assert git_status(project) == "" and answers(project)[name] == value  # nothing written


def test_an_answer_the_new_release_refuses_is_never_replaced_silently(template, work):
    # An older release took package_name sitecustomize; the next one refuses it.
    copier_yml = template / "copier.yml"
    rule = "package_name | lower in ['sitecustomize', 'usercustomize']"
    assert rule in copier_yml.read_text()
    copier_yml.write_text(copier_yml.read_text().replace(rule, "false"))
    commit_all(template, "an older release")
    made = scaffold_from(template, "new", "proj", "--package-name", "sitecustomize", cwd=work)
    assert made.returncode == 0, made.stderr
    project = work / "proj"
    copier_yml.write_text(copier_yml.read_text().replace("elif false", f"elif {rule}"))
    commit_all(template, "sitecustomize refused")
    git("tag", NEXT_TAG, cwd=template)

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert_one_line(
        result,
        "package_name in proj/.copier-answers.yml: 'sitecustomize' is a module Python imports",
        "pass --package-name NAME",
    )
    assert "--name" not in result.stderr
    assert git_status(project) == "" and answers(project)["package_name"] == "sitecustomize"

    result = scaffold_from(template, "update", "proj", "--package-name", "proj_pkg", cwd=work)
    assert result.returncode == 0, result.stderr
    assert "package_name sitecustomize -> proj_pkg" in result.stdout
    assert (project / "src" / "proj_pkg" / "cli.py").is_file()


@pytest.mark.parametrize(
    "text, says",
    [
        ("_commit: v1\n_src_path: [unclosed\n", "is not valid YAML ("),
        ("- task\n- framework\n", "holds a list, not the answers"),
    ],
    ids=["broken", "list"],
)
def test_an_answers_file_that_is_not_answers_is_one_line(text, says, template, work):
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    (project / ".copier-answers.yml").write_text(text)
    commit_all(project, "broken by a bad merge")

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert_one_line(result, f"proj/.copier-answers.yml {says}", "restore a good version")
    assert "Traceback" not in result.stderr


def test_a_template_folder_that_is_gone_is_named_with_the_fix(template, work):
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    recorded = answers(project)
    recorded["_src_path"] = str(work / "moved-away" / "torch-scaffold")
    (project / ".copier-answers.yml").write_text(yaml.safe_dump(recorded))
    commit_all(project, "the template checkout moved")

    result = scaffold_from(template, "update", "proj", cwd=work)
    assert_one_line(
        result,
        f"records the template at {work / 'moved-away' / 'torch-scaffold'} (_src_path)",
        "set _src_path to a torch-scaffold checkout, or to its git URL",
    )


def test_an_unknown_vcs_ref_is_blamed_on_the_flag(template, work):
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    result = scaffold_from(template, "update", "proj", "--vcs-ref", "v9.9.9", cwd=work)
    assert_one_line(result, "'--vcs-ref': the template", "has no tag or commit 'v9.9.9'")
    assert git_status(work / "proj") == ""


@pytest.mark.parametrize("case", ["settings beside it", "a setting it drops"])
def test_a_settings_conflict_is_resolved_when_the_user_only_set_settings(case, template, work):
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    config = project / "configs" / "default.yaml"
    mine = {"settings beside it": "batch_size", "a setting it drops": "grad_clip"}[case]
    config.write_text(re.sub(rf"  # {mine}: \S+", f"  {mine}: 0.5", config.read_text()))
    commit_all(project, "our settings")
    # The next release rewords the line under batch_size, and drops grad_clip: each a change
    # beside or on the user's line, which Copier's merge leaves as a conflict.
    default = template / "template" / "configs" / "default.yaml.jinja"
    text = default.read_text().replace("# the peak learning rate", "# the highest learning rate")
    default.write_text(re.sub(r"  # grad_clip: .*\n", "", text))
    commit_all(template, "next release")
    git("tag", NEXT_TAG, cwd=template)

    result = scaffold_from(template, "update", "proj", cwd=work)
    text = config.read_text()
    if case == "a setting it drops":  # which the user must decide about
        assert result.returncode == 1, result.stdout + result.stderr
        assert "conflict: configs/default.yaml" in result.stderr
        return
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "configs/default.yaml: the template's new file, with your settings in it "
        "(train.batch_size)\n" in result.stdout
    )
    assert "\n  batch_size: 0.5\n" in text and "# the highest learning rate" in text
    assert "grad_clip" not in text and "<<<<<<<" not in text
    assert git_status(project).count("configs/default.yaml") == 1  # modified, not unmerged
    assert " M configs/default.yaml" in git_status(project)


BASE = "# settings\ndata:\n  # path: null  # yours\n\ntrain:\n  # lr: 0.1\n  # seed: 42\n"
THEIRS = "# settings\ndata:\n  # path: null  # a CSV\n\ntrain:\n  # lr: 0.1  # peak\n  # seed: 42\n"


@pytest.mark.parametrize(
    "ours, merged",
    [
        (
            BASE.replace("# lr: 0.1", "lr: 0.5  # ours"),
            THEIRS.replace("# lr: 0.1  # peak", "lr: 0.5  # ours"),
        ),
        (
            BASE.replace("# lr", "lr").replace("# path", "path"),
            THEIRS.replace("# lr: 0.1  # peak", "lr: 0.1").replace(
                "# path: null  # a CSV", "path: null  # yours"
            ),
        ),
        (BASE.replace("# seed: 42", "seed: 42\n  # a note of ours"), None),  # more than settings
        (BASE.replace("# settings\n", ""), None),  # a line removed
        (BASE + "  epochs: 3\n", None),  # a setting neither file lists
        (BASE.replace("train:", "model:"), None),  # a section renamed
    ],
    ids=["one", "two", "a comment", "a removal", "unknown", "a section"],
)
def test_merge_settings_takes_only_settings(ours, merged):
    from generator.project import merge_settings

    result = merge_settings(BASE, ours, THEIRS)
    assert (result and result[0]) == merged


# --- extras: added and removed later -----------------------------------------------------


def files_of(project) -> set[str]:
    """The project's files, relative to it, git's own left out."""
    return {
        str(path.relative_to(project))
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(project).parts[:1]
    }


def fresh_files(template_copy, dest, project) -> set[str]:
    """The files of a project made afresh by this working tree's template with the project's
    answers: what an update must leave (no file of an extra that is gone, none missing)."""
    given = {k: v for k, v in answers(project).items() if not k.startswith("_")}
    return files_of(render(template_copy, dest, **given))


def test_with_and_without_add_and_remove_an_extra_keeping_the_users_edits(
    template, work, template_copy, tmp_path
):
    assert scaffold_from(template, "new", "proj", cwd=work).returncode == 0
    project = work / "proj"
    edit_project(project)

    result = scaffold_from(
        template, "update", "proj", "--with", "sweeps", "--with", "folds", cwd=work
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "extras +sweeps +folds;" in result.stdout
    assert answers(project)["extras"] == ["sweeps", "folds"]
    assert files_of(project) == fresh_files(template_copy, tmp_path / "both", project)
    assert "batch_size: 48" in (project / "configs" / "default.yaml").read_text()
    assert "92% on the team's data." in (project / "README.md").read_text()
    commit_all(project, "sweeps and folds")

    result = scaffold_from(template, "update", "proj", "--without", "sweeps", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "extras -sweeps;" in result.stdout
    assert answers(project)["extras"] == ["folds"]
    assert files_of(project) == fresh_files(template_copy, tmp_path / "folds", project)
    assert "batch_size: 48" in (project / "configs" / "default.yaml").read_text()
    assert not conflict_markers(project, sorted(files_of(project)))


def test_a_project_without_an_extras_answer_keeps_what_it_had(template, work):
    # As a project made before extras were a question records its answers.
    made = scaffold_from(template, "new", "proj", "--hardware", "multi-gpu", cwd=work)
    assert made.returncode == 0, made.stderr
    project = work / "proj"
    recorded = answers(project)
    del recorded["extras"]
    (project / ".copier-answers.yml").write_text(yaml.safe_dump(recorded))
    commit_all(project, "as made before extras were a question")

    result = scaffold_from(template, "update", "proj", "--without", "folds", cwd=work)
    assert result.returncode == 0, result.stdout + result.stderr
    # Every project had the sweeps and the folds then, and a multi-gpu one SLURM scripts.
    assert result.stdout.startswith(
        "proj/.copier-answers.yml has no extras answer (the project was made before extras "
        "were a question): it keeps the ones it had, sweeps and slurm (folds dropped by "
        "--without)\n"
    )
    assert "extras -folds;" in result.stdout
    assert answers(project)["extras"] == ["sweeps", "slurm"]


# --- a project made before the redesign (issue 25) ---------------------------------------

# The last commit of this repository before the generated project's redesign.
BEFORE_THE_REDESIGN = "c809fc7"
# The user's edits: a layer added to the image model, and two settings of their own.
FLATTEN = "            nn.Flatten(),\n"
ADDED_LAYER = "            nn.Linear(8 * width, 8 * width),  # ours\n            nn.ReLU(),\n"
SETTINGS = {"  # width: 16": "  width: 24", "  # batch_size: 64": "  batch_size: 48"}


def checkout_before_the_redesign(path: Path) -> Path:
    """A torch-scaffold clone at BEFORE_THE_REDESIGN (its CHECKOUT_FILES), tagged TAG."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", BEFORE_THE_REDESIGN, *CHECKOUT_FILES],
        capture_output=True,
    )
    if archive.returncode != 0:
        reason = (
            f"this clone lacks commit {BEFORE_THE_REDESIGN} (a shallow clone?): "
            "git fetch --unshallow"
        )
        if os.environ.get("CI"):  # CI clones the whole history (fetch-depth: 0)
            pytest.fail(reason)
        pytest.skip(reason)
    path.mkdir(parents=True)
    run(["tar", "-x", "-C", str(path)], input=archive.stdout, text=False)
    git("init", "--quiet", cwd=path)
    commit_all(path, "torch-scaffold before the redesign")
    git("tag", TAG, cwd=path)
    return path


def release_this_working_tree(template: Path) -> None:
    """The template's next release: this working tree's CHECKOUT_FILES, tagged NEXT_TAG."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in CHECKOUT_FILES:
        source, target = REPO / name, template / name
        if target.is_dir():
            shutil.rmtree(target)
        if source.is_dir():
            shutil.copytree(source, target, ignore=ignore)
        else:
            shutil.copy(source, target)
    commit_all(template, "the redesign")
    git("tag", NEXT_TAG, cwd=template)


@pytest.fixture(scope="module")
def made_before_the_redesign(tmp_path_factory):
    """A project that the last release before the redesign made, with the user's edits to
    model.py and configs/default.yaml committed, then updated by `scaffold update` to this
    working tree's template: (project, the update's result, the project's files before)."""
    root = tmp_path_factory.mktemp("before-the-redesign")
    env = {"COPIER_CACHE_DIR": str(root / "copier-cache")}
    template = checkout_before_the_redesign(root / "torch-scaffold")
    work = root / "work"
    work.mkdir()
    made = scaffold_from(template, "new", "proj", cwd=work, env=env)
    assert made.returncode == 0, made.stderr
    project = work / "proj"
    before = files_of(project)
    model = project / "src" / "proj" / "model.py"
    assert model.read_text().count(FLATTEN) == 1
    model.write_text(model.read_text().replace(FLATTEN, FLATTEN + ADDED_LAYER))
    config = project / "configs" / "default.yaml"
    text = config.read_text()
    for old, new in SETTINGS.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config.write_text(text)
    commit_all(project, "our model and settings")

    release_this_working_tree(template)
    result = scaffold_from(template, "update", "proj", cwd=work, env=env)
    return project, result, before


@pytest.mark.xdist_group("before-the-redesign")
def test_a_project_made_before_the_redesign_updates_to_the_new_layout(
    made_before_the_redesign, template_copy, tmp_path
):
    project, result, before = made_before_the_redesign
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # It had the sweeps and the folds, as every project then: it keeps them.
    assert "proj/.copier-answers.yml has no extras answer" in result.stdout
    assert "it keeps the ones it had, sweeps and folds\n" in result.stdout
    recorded = answers(project)
    assert recorded["_commit"] == NEXT_TAG and recorded["extras"] == ["sweeps", "folds"]

    # The user's edits survive, and no conflict is left in any file.
    assert ADDED_LAYER in (project / "src" / "proj" / "model.py").read_text()
    config = (project / "configs" / "default.yaml").read_text()
    assert all(setting in config for setting in SETTINGS.values()), config
    files = files_of(project)
    assert not [name for name in files if name.endswith(".rej")]
    assert not conflict_markers(project, sorted(files))

    # The new layout, exactly: the old machinery that it dropped is gone.
    assert files == fresh_files(template_copy, tmp_path / "fresh", project)
    machinery = ("hardware", "lightning_parts", "record", "splits", "trackers")
    assert {f"src/proj/plumbing/{name}.py" for name in machinery} <= before - files

    # The project's new command line runs.
    result = subprocess.run(
        [sys.executable, "-m", "proj", "--help"],
        cwd=project,
        env={**os.environ, "PYTHONPATH": str(project / "src")},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "predict" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.xdist_group("before-the-redesign")
def test_a_project_made_before_the_redesign_trains_after_the_update(
    made_before_the_redesign, tmp_path
):
    project, result, _ = made_before_the_redesign
    assert result.returncode == 0, result.stdout + result.stderr
    copy = tmp_path / "proj"  # the fast test above reads the project's files: train a copy
    shutil.copytree(project, copy)
    installed = install(copy, tmp_path / "venv")
    steps = ["--max-steps", "20", "train.eval_every=10"]
    (trained,) = installed.drive(["train", "--accelerator", "cpu", *steps])
    trained.check()
    folder = copy / trained.stdout.strip().splitlines()[-1].removeprefix("run folder: ")
    assert (folder / "checkpoints" / "last.ckpt").is_file()
