"""The `scaffold` command: flags from copier.yml, defaults, bad values, destinations, matrix."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib

import pexpect
import pytest
import yaml
from conftest import COMBINATIONS, REPO, make_template_repo, scaffold_from

from generator import __version__
from generator.questions import MATRIX_AXES, load_questions


def scaffold(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "generator", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def answers(project) -> dict:
    return yaml.safe_load((project / ".copier-answers.yml").read_text())


@pytest.mark.parametrize("command", ["new", "update"])
def test_help_lists_a_flag_per_question_and_imports_no_framework(command):
    code = (
        "import sys\n"
        "from generator.cli import main\n"
        f"sys.argv = ['scaffold', '{command}', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'lightning', 'copier'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for question in load_questions():
        assert question.flag in result.stdout
        for choice in question.choices or ():
            assert choice in result.stdout
    # Listed in copier.yml's order: the task, the framework and the hardware first.
    listed = [re.search(rf"^  {q.flag} ", result.stdout, re.M).start() for q in load_questions()]
    assert listed == sorted(listed)


def test_version():
    result = scaffold("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"torch-scaffold {__version__}"


def test_new_with_flags_takes_every_answer(tmp_path):
    result = scaffold(
        "new",
        str(tmp_path / "proj"),
        "--name",
        "Text Thing",
        "--task",
        "text-classification",
        "--framework",
        "raw",
        "--hardware",
        "gpu",
        "--license",
        "Apache-2.0",
        "--logger",
        "tensorboard",
    )
    assert result.returncode == 0, result.stderr
    given = answers(tmp_path / "proj")
    assert given["project_name"] == "Text Thing"
    assert given["package_name"] == "text_thing"
    assert (given["task"], given["framework"], given["hardware"]) == (
        "text-classification",
        "raw",
        "gpu",
    )
    assert (tmp_path / "proj/src/text_thing/engine.py").is_file()
    assert "Apache License" in (tmp_path / "proj/LICENSE").read_text()
    assert "tensorboard" in (tmp_path / "proj/pyproject.toml").read_text()


def test_new_without_a_terminal_takes_the_defaults(tmp_path):
    result = scaffold("new", str(tmp_path / "proj"))
    assert result.returncode == 0, result.stderr
    given = answers(tmp_path / "proj")
    for question in load_questions():
        if question.default is not None:
            assert given[question.name] == question.default, question.name
    assert given["project_name"] == "proj"  # named after its folder
    assert given["extras"] == []  # none on the cpu
    assert (tmp_path / "proj/src/proj/cli.py").is_file()


@pytest.mark.parametrize(
    "args, extras",
    [
        (["--with", "folds", "--with", "sweeps"], ["sweeps", "folds"]),  # in copier.yml's order
        (["--with", "sweeps,slurm"], ["sweeps", "slurm"]),
        (["--hardware", "multi-gpu"], ["slurm"]),  # the multi-gpu default
        (["--hardware", "multi-gpu", "--with", "folds"], ["folds"]),  # --with is the answer
    ],
)
def test_with_gives_the_extras_answer(args, extras, tmp_path):
    result = scaffold("new", str(tmp_path / "proj"), "--no-git", *args)
    assert result.returncode == 0, result.stderr
    assert answers(tmp_path / "proj")["extras"] == extras
    assert f"package `proj`, with {' and '.join(extras)}, no git repository" in result.stdout


def test_copier_copy_takes_the_extras_as_a_yaml_list(template_copy, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet"]
        + ["--data", "extras=[sweeps, folds]", str(template_copy), str(tmp_path / "proj")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert answers(tmp_path / "proj")["extras"] == ["sweeps", "folds"]


def spawn_in_terminal(*args: str, cwd) -> pexpect.spawn:
    """`scaffold` attached to a pseudo-terminal, as a user at a shell runs it."""
    child = pexpect.spawn(
        sys.executable,
        ["-m", "generator", *args],
        cwd=str(cwd),
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
    )
    child.logfile_read = io.StringIO()  # the whole screen, for a failure's message
    return child


def every_answer(but: str | None = None) -> dict[str, str | list[str]]:
    """A valid answer to every question except `but`, not always the default one (every
    extra of the multi-select)."""
    given = {"project_name": "Demo", "package_name": "demo", "author_email": "a@b.co"}
    for question in load_questions():
        if question.multiselect:
            given[question.name] = list(question.choices)
        elif question.name not in given:
            given[question.name] = question.choices[-1] if question.choices else "x"
    given["task"] = "text-classification"  # one that takes every extra and a pretrained model
    given.pop(but, None)
    return given


def as_flags(given: dict[str, str | list[str]]) -> list[str]:
    """The flags of these answers: a multi-select's flag once per value (--with a --with b)."""
    flags = {question.name: question.flag for question in load_questions()}
    return [
        arg
        for name, value in given.items()
        for item in (value if isinstance(value, list) else [value])
        for arg in (flags[name], item)
    ]


def recorded(written: dict, given: dict) -> dict:
    """The answers file's values of the questions in `given`, as `given` holds them."""
    return {
        name: written[name] if isinstance(written[name], list) else str(written[name])
        for name in given
    }


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_in_a_terminal_a_missing_answer_is_asked_for(tmp_path):
    given = every_answer(but="framework")
    child = spawn_in_terminal("new", "proj", *as_flags(given), cwd=tmp_path)
    try:
        child.expect("Which training engine")
        child.send("\x1b[B")  # arrow down from the default, Lightning, to plain PyTorch
        child.send("\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    screen = child.logfile_read.getvalue()
    assert child.exitstatus == 0, screen
    written = answers(tmp_path / "proj")
    assert recorded(written, given) == given
    assert written["framework"] == "raw"
    asked = [q.name for q in load_questions() if q.help.split("(")[0].strip() in screen]
    assert asked == ["framework"]
    assert "demo train" in screen  # the message after copy: the next commands


def test_the_questions_that_matter_come_first():
    names = [question.name for question in load_questions()]
    assert names[:4] == list(MATRIX_AXES) == ["task", "framework", "hardware", "backbone"]
    assert names.index("project_name") > names.index("backbone")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_in_a_terminal_task_framework_and_hardware_are_asked_first(tmp_path):
    questions = load_questions()
    prompts = {re.escape(q.help.split("(")[0].strip()): q.name for q in questions}
    child = spawn_in_terminal("new", "proj", cwd=tmp_path)
    asked = []
    try:
        while len(asked) < len(questions):
            pending = [pattern for pattern, name in prompts.items() if name not in asked]
            asked.append(prompts[pending[child.expect(pending)]])
            child.send("\r")  # the proposed answer
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.logfile_read.getvalue()
    assert asked == [q.name for q in questions]  # copier.yml's order
    assert asked[:4] == list(MATRIX_AXES)


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_in_a_terminal_the_name_prompt_proposes_the_folder_name(tmp_path):
    given = every_answer(but="project_name")
    given.pop("package_name")  # proposed too, derived from the name
    child = spawn_in_terminal("new", "foo-bar", *as_flags(given), cwd=tmp_path)
    try:
        child.expect("Project name")
        child.expect("foo-bar")  # the proposed answer
        child.send("\r")
        child.expect("Python import name")
        child.expect("foo_bar")  # and the package name derived from it
        child.send("\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.logfile_read.getvalue()
    written = answers(tmp_path / "foo-bar")
    assert (written["project_name"], written["package_name"]) == ("foo-bar", "foo_bar")


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_in_a_terminal_with_every_answer_given_nothing_is_asked(tmp_path):
    given = every_answer()
    child = spawn_in_terminal("new", "proj", *as_flags(given), cwd=tmp_path)
    try:
        child.expect(pexpect.EOF)  # no keys sent: a prompt would time out
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.logfile_read.getvalue()
    written = answers(tmp_path / "proj")
    assert recorded(written, given) == given


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_in_a_terminal_the_extras_are_a_multi_select(tmp_path):
    given = every_answer(but="extras")
    child = spawn_in_terminal("new", "proj", *as_flags(given), cwd=tmp_path)
    try:
        child.expect("What else should the project hold")
        child.send(" ")  # tick the first extra, sweeps
        child.send("\x1b[B")  # down to the second, folds
        child.send(" ")
        child.send("\r")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, child.logfile_read.getvalue()
    assert answers(tmp_path / "proj")["extras"] == ["sweeps", "folds"]


@pytest.mark.parametrize(
    "args, says",
    [
        (["--task", "imagenet"], "--task': 'imagenet' is not one of 'image-classification', "),
        (["--hardware", "tpu"], "'tpu' is not one of 'cpu', 'gpu', 'multi-gpu', 'mps'"),
        (["--package-name", "class"], "'class' is a Python keyword"),
        (["--package-name", "torch"], "would shadow the standard library or a dependency"),
        (["--package-name", "2fast"], "is not a package name"),
        (["--name", "a project name far longer than a package name should be"], "more than 40"),
        (["--author-email", "nobody"], "is not an e-mail address"),
        (
            ["--task", "tabular-regression", "--backbone", "pretrained"],
            "Invalid value for '--backbone': tabular-regression trains from scratch; pretrained",
        ),
        (["--bogus"], "No such option: --bogus"),
        (
            ["--with", "sweeps", "--with", "sweep"],
            "Invalid value for '--with': 'sweep' is not one of 'sweeps', 'folds', 'slurm'; "
            "did you mean 'sweeps'?",
        ),
    ],
)
def test_a_bad_value_is_one_line_and_exit_2(tmp_path, args, says):
    result = scaffold("new", str(tmp_path / "proj"), "--defaults", *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.stderr and "Value error" not in result.stderr
    assert not (tmp_path / "proj").exists() or not any((tmp_path / "proj").iterdir())


def test_update_names_a_bad_choice_the_same_way(tmp_path):
    result = scaffold("update", str(tmp_path), "--task", "imagenet")
    assert result.returncode == 2
    assert result.stderr == (
        "error: Invalid value for '--task': 'imagenet' is not one of 'image-classification', "
        "'text-classification', 'tabular-regression', 'language-modeling'.\n"
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["--with", "slrum"], "'--with': 'slrum' is not one of 'sweeps', 'folds', 'slurm'; "),
        (["--without", "fold"], "'--without': 'fold' is not one of 'sweeps', 'folds', 'slurm'"),
        (["--with", "sweeps", "--without", "sweeps"], "'--without': sweeps given to both"),
    ],
)
def test_update_refuses_a_bad_extra_in_one_line(args, says, tmp_path):
    result = scaffold("update", str(tmp_path), *args)  # before it looks at the project
    assert result.returncode == 2
    assert result.stderr.startswith("error: Invalid value for ") and says in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_a_non_empty_destination_is_refused_and_left_alone(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("my notes")
    (dest / "README.md").write_text("my readme")
    result = scaffold("new", str(dest), "--defaults")
    assert result.returncode == 2
    assert "is not empty" in result.stderr and "--force" in result.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "notes.txt"]
    assert (dest / "README.md").read_text() == "my readme"

    result = scaffold("new", str(dest), "--defaults", "--force")
    assert result.returncode == 0, result.stderr
    assert (dest / "notes.txt").read_text() == "my notes"  # not the template's: kept
    assert (dest / "src/mine/engine.py").is_file()


def test_matrix_lists_every_combination():
    result = scaffold("matrix")
    assert result.returncode == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    # 4 tasks x 2 frameworks x 4 hardware, scratch; pretrained for the image, text and
    # language tasks (tabular trains from scratch).
    assert len(rows) == len(COMBINATIONS) == 32 + 24
    assert {tuple(row) for row in rows} == {tuple(c.values()) for c in COMBINATIONS}
    tabular = [c for c in COMBINATIONS if c["task"] == "tabular-regression"]
    assert {c["backbone"] for c in tabular} == {"scratch"}


def test_matrix_json_is_a_github_actions_strategy_matrix():
    result = scaffold("matrix", "--json")
    assert result.returncode == 0
    matrix = json.loads(result.stdout)
    assert list(matrix) == ["include"]
    assert matrix["include"] == COMBINATIONS
    assert all(
        set(row) == {"task", "framework", "hardware", "backbone"} for row in matrix["include"]
    )


def git_log(project) -> list[str]:
    return subprocess.run(
        ["git", "log", "--format=%an <%ae>|%s"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def test_a_project_is_named_after_its_folder_and_is_a_git_repository(tmp_path):
    result = scaffold("new", "foo-bar", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    project = tmp_path / "foo-bar"
    given = answers(project)
    assert (given["project_name"], given["package_name"]) == ("foo-bar", "foo_bar")
    assert 'foo-bar = "foo_bar.cli:main"' in (project / "pyproject.toml").read_text()
    assert (project / "src/foo_bar/cli.py").is_file()
    assert "cd foo-bar && pip install -e '.[dev]' && foo-bar train" in result.stdout
    (commit,) = git_log(project)
    axes = "image-classification, lightning, cpu, scratch"
    assert commit.endswith(f"|Generated by torch-scaffold {__version__}: {axes}")
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True
    )
    assert status.stdout == ""  # every generated file is in that commit


def test_the_name_flag_wins_over_the_folder_name(tmp_path):
    result = scaffold("new", "foo-bar", "--name", "Other Thing", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert answers(tmp_path / "foo-bar")["package_name"] == "other_thing"
    assert "&& other-thing train" in result.stdout


def test_the_first_commit_needs_no_git_identity(tmp_path):
    # A CI machine: no global or system git configuration at all.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("GIT_AUTHOR", "GIT_COMMITTER", "EMAIL"))
    }
    env.update(HOME=str(tmp_path), GIT_CONFIG_GLOBAL=os.devnull, GIT_CONFIG_NOSYSTEM="1")
    result = subprocess.run(
        [sys.executable, "-m", "generator", "new", "proj", "--author-name", "Ada L"]
        + ["--author-email", "ada@example.org"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    assert git_log(tmp_path / "proj")[0].startswith("Ada L <ada@example.org>|")
    assert not (tmp_path / ".gitconfig").exists()  # the user's configuration is left alone


def test_inside_another_work_tree_no_nested_repository_is_made(tmp_path):
    subprocess.run(["git", "init", "--quiet", str(tmp_path / "outer")], check=True)
    result = scaffold("new", "inner", cwd=tmp_path / "outer")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "outer/inner/.git").exists()
    assert "inside the git work tree" in result.stdout
    # Said before writing, with the way to a repository of its own.
    assert result.stderr == (
        f"warning: inner is inside the git work tree {tmp_path / 'outer'}: the project will be "
        "part of that repository (commit it there), with no repository of its own; for one, "
        "make it outside, e.g. scaffold new ../inner\n"
    )
    # Uncommitted there, it cannot be updated: said in one line, with the fix.
    result = scaffold("update", "inner", cwd=tmp_path / "outer")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"inner is not committed in the git repository {tmp_path / 'outer'}" in result.stderr
    assert "commit it there, or move it out" in result.stderr


def quick_start() -> list[str]:
    """The commands of the README's "Generate a project and train it", as CI types them."""
    section = (REPO / "README.md").read_text().split("## Generate a project and train it")[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [command for line in block.splitlines() for command in line.split(" && ")]


def test_the_readme_quick_start_makes_a_project_of_its_own_beside_the_clone(tmp_path):
    clone = make_template_repo(tmp_path / "torch-scaffold", f"v{__version__}")
    (new,) = [shlex.split(c) for c in quick_start() if c.startswith("scaffold new ")]
    (cd,) = [shlex.split(c) for c in quick_start() if c.startswith("cd ")]
    result = scaffold_from(clone, *new[1:], cwd=clone)  # typed in the clone, after pip install
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    project = (clone / cd[1]).resolve()
    assert not project.is_relative_to(clone)
    assert len(git_log(project)) == 1  # a repository of its own, with its first commit
    command = tomllib.loads((project / "pyproject.toml").read_text())["project"]["name"]
    assert f"{command} train" in quick_start()  # the command it made is the one trained
    clean = subprocess.run(
        ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True
    )
    assert clean.stdout == ""  # the template's clone is left as it was


def test_inside_its_own_template_checkout_scaffold_says_so_before_writing(tmp_path):
    clone = make_template_repo(tmp_path / "torch-scaffold", f"v{__version__}")
    # A refused answer stops before anything is written: the warning came first.
    result = scaffold_from(clone, "new", "my-project", "--package-name", "class", cwd=clone)
    assert result.returncode == 2
    warning, error = result.stderr.splitlines()
    assert warning == (
        f"warning: my-project is inside {clone}, the torch-scaffold checkout this scaffold runs "
        "from: the project will be untracked files of the template's repository, with no "
        "repository of its own; to avoid that, make it outside: scaffold new ../my-project"
    )
    assert error.startswith("error: Invalid value for '--package-name'")
    assert not (clone / "my-project").exists()


def test_no_git_makes_no_repository(tmp_path):
    result = scaffold("new", "proj", "--no-git", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "proj/.git").exists()
