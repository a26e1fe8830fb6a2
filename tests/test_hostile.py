"""Hostile answers: those full of quotes, backslashes, emoji and Jinja give a project that
parses; those that would break a project are refused in one line, exit code 2, the fix named,
nothing written. Render only: no install, no training."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib

import pytest
import yaml
from conftest import TASKS, render, run

from generator.cli import main

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


# --- refused answers -----------------------------------------------------------------------


def scaffold_in_process(*args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """`scaffold ARGS` in this process (no interpreter start-up per case): code, stdout, stderr."""
    monkeypatch.setattr(sys, "argv", ["scaffold", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def assert_refused(code: int, err: str, flag: str, *says: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line
    assert flag in err.split(":")[1], err  # the flag (or DEST) that needs changing
    for text in says:
        assert text in err, err
    assert "Traceback" not in err


@pytest.fixture
def here(tmp_path, monkeypatch):
    """An empty folder to work in; a refused answer must leave it empty."""
    folder = tmp_path / "here"
    folder.mkdir()
    monkeypatch.chdir(folder)
    yield folder
    assert not any(folder.iterdir()), list(folder.iterdir())


# Hidden, derived values: `copier copy --data` must not set them.
HIDDEN = [
    {"project_slug": 'evil"slug'},
    {"python_keywords": "x", "package_name": "class"},
    {"reserved_package_names": "x", "package_name": "os"},
    {"reserved_command_names": "x", "project_name": "python"},
    {"environment_modules": "x"},
]


@pytest.mark.parametrize("data", HIDDEN, ids=lambda data: next(iter(data)))
def test_hidden_values_cannot_be_set_from_outside(data, template_copy, here):
    from copier import run_copy

    name = next(iter(data))
    with pytest.raises(ValueError, match=f"question '{name}': {name} is "):
        run_copy(str(template_copy), here / "proj", data=data, defaults=True, quiet=True)


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


PACKAGE_NAMES = [
    ("__main__", "starting with a letter"),
    ("__future__", "starting with a letter"),
    ("__pycache__", "starting with a letter"),
    ("_tasks", "starting with a letter"),  # _exclude would drop these folders
    ("_engines", "starting with a letter"),
    ("_licenses", "starting with a letter"),
    ("2fast", "starting with a letter"),
    ("my-package", "is not a package name"),
    ("foo\n", "control character"),
    ("class", "is a Python keyword"),
    # Python imports these at every start of an environment that has them.
    ("sitecustomize", "a module Python imports at every start"),
    ("usercustomize", "a module Python imports at every start"),
    ("torch", "would shadow the standard library or a dependency"),
    ("os", "would shadow the standard library or a dependency"),
    ("torchgen", "would shadow a module installed here"),
    ("fsspec", "would shadow a module installed here"),
    ("typing_extensions", "would shadow a module installed here"),
    ("lightning_fabric", "would shadow a module installed here"),
    ("a" * 41, "more than 40"),
]


@pytest.mark.parametrize("name, says", PACKAGE_NAMES, ids=[n for n, _ in PACKAGE_NAMES])
def test_a_package_name_that_would_break_the_project_is_refused(
    name, says, here, monkeypatch, capsys
):
    if "installed here" in says and not installed(name):
        pytest.skip(f"{name} is not installed here")
    code, _, err = scaffold_in_process(
        "new", "proj", "--defaults", "--package-name", name, monkeypatch=monkeypatch, capsys=capsys
    )
    assert_refused(code, err, "--package-name", says)


PROJECT_NAMES = [
    ("python", "--name", "hides the usual `python`"),
    ("pip", "--name", "hides the usual `pip`"),
    ("pytest", "--name", "hides the usual `pytest`"),
    ("PIP!", "--name", "hides the usual `pip`"),
    ("x" * 300, "--name", "300 characters long"),
    ("a\nb", "--name", "control character"),
    ("123", "--name", "has no letter"),
    ("", "--name", "has no letter"),
    # Derived package names: blamed on --name, with --package-name as the way out.
    ("ñandú", "--name", "its package name 'and' is a Python keyword"),
    ("Class", "--name", "its package name 'class' is a Python keyword"),
    ("Torch", "--name", "its package name 'torch' would shadow"),
    ("a project name far longer than a package name should be", "--name", "more than 40"),
]


@pytest.mark.parametrize(
    "name, flag, says", PROJECT_NAMES, ids=[repr(n[:12]) for n, _, _ in PROJECT_NAMES]
)
def test_a_project_name_that_would_break_the_project_is_refused(
    name, flag, says, here, monkeypatch, capsys
):
    code, _, err = scaffold_in_process(
        "new", "proj", "--defaults", "--name", name, monkeypatch=monkeypatch, capsys=capsys
    )
    assert_refused(code, err, flag, says)
    if "its package name" in says:
        assert "--package-name NAME" in err


TEXT_ANSWERS = [
    ("--author-name", "Ada\nLovelace", "control character"),
    ("--author-name", "Ada\rLovelace", "control character"),
    ("--author-name", "Ada\tLovelace", "control character"),
    ("--description", "a DEL \x7f character", "control character"),
    ("--description", "a bell \x07", "control character"),
    ("--description", "colours \x1b[31m red", "control character"),
    ("--description", "two\nlines", "control character"),
    ("--author-email", "ada@example.org\n", "control character"),
    ("--author-email", '"ada"@example.org', "is not an e-mail address"),
    ("--author-email", "ada@example.org,bob@example.org", "is not an e-mail address"),
    ("--author-email", "ada lovelace@example.org", "is not an e-mail address"),
    ("--author-email", "<ada@example.org>", "is not an e-mail address"),
    ("--author-email", "ada@example", "is not an e-mail address"),
    ("--author-email", "ada@example.org;x", "is not an e-mail address"),
    # Bytes that are not UTF-8 ($'\xff' in a shell) reach Python as lone surrogates.
    ("--description", "caf\udce9", "is not UTF-8 text"),
    ("--author-name", "\udcff", "is not UTF-8 text"),
    ("--author-email", "\udcff@example.org", "is not UTF-8 text"),
    ("--name", "Caf\udce9", "is not UTF-8 text"),
]


@pytest.mark.parametrize(
    "flag, value, says", TEXT_ANSWERS, ids=[f"{f}={v!r}" for f, v, _ in TEXT_ANSWERS]
)
def test_text_that_would_break_the_metadata_is_refused(
    flag, value, says, here, monkeypatch, capsys
):
    code, _, err = scaffold_in_process(
        "new", "proj", "--defaults", flag, value, monkeypatch=monkeypatch, capsys=capsys
    )
    assert_refused(code, err, flag, says)


@pytest.mark.skipif(os.name != "posix", reason="bytes in a command line are POSIX")
@pytest.mark.parametrize("flag", ["--description", "--author-name", "--name", "DEST"])
def test_an_argument_that_is_not_utf8_names_its_flag(flag, here):
    # What `scaffold new x --description $'\xff'` passes: a byte that is not UTF-8.
    args = ["new", b"caf\xe9"] if flag == "DEST" else ["new", "proj", flag, b"caf\xe9"]
    result = subprocess.run(
        [sys.executable, "-m", "generator", *args, "--defaults"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    err = result.stderr.decode(errors="backslashreplace")
    assert_refused(result.returncode, err, flag, "is not UTF-8 text")


FOLDER_NAMES = [
    ("class", "its package name 'class' is a Python keyword"),
    ("123", "has no letter"),
    ("python", "hides the usual `python`"),
]


@pytest.mark.parametrize("folder, says", FOLDER_NAMES, ids=[f for f, _ in FOLDER_NAMES])
def test_a_folder_name_that_would_break_the_project_is_refused(
    folder, says, here, monkeypatch, capsys
):
    code, _, err = scaffold_in_process(
        "new", folder, "--defaults", monkeypatch=monkeypatch, capsys=capsys
    )
    assert_refused(code, err, "DEST", says, "the project is named after this folder", "--name")


def test_a_destination_through_a_missing_folder_is_refused(here, monkeypatch, capsys):
    code, _, err = scaffold_in_process(
        "new", "a/nosuchdir/../x", monkeypatch=monkeypatch, capsys=capsys
    )
    assert_refused(code, err, "DEST", "a/nosuchdir does not exist")


def test_a_destination_under_a_file_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = scaffold_in_process(
        "new", str(tmp_path / "notes.txt" / "proj"), monkeypatch=monkeypatch, capsys=capsys
    )
    assert_refused(code, err, "DEST", "notes.txt is a file")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_a_destination_in_a_read_only_folder_is_refused(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    if os.geteuid() == 0:  # root may write anywhere: make this folder read-only for the check
        access = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: path != locked and access(path, mode))
    try:
        code, _, err = scaffold_in_process(
            "new", str(locked / "a" / "proj"), monkeypatch=monkeypatch, capsys=capsys
        )
    finally:
        locked.chmod(0o755)
    assert_refused(code, err, "DEST", "is not writable")
    assert not any(locked.iterdir())


def copier_copy(template, dest, *data: str) -> subprocess.CompletedProcess:
    """Plain `copier copy --defaults` with these --data values (exit code unchecked)."""
    return subprocess.run(
        [sys.executable, "-m", "copier", "copy", "--defaults", "--quiet"]
        + [arg for value in data for arg in ("--data", value)]
        + [str(template), str(dest)],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "data, says",
    [
        ("author_email=nobody", "'nobody' is not an e-mail address"),
        ("task=imagenet", "'imagenet' is not in ['image-classification', "),
        ("package_name=sitecustomize", "a module Python imports at every start"),
        ("package_name=usercustomize", "a module Python imports at every start"),
        (b"description=caf\xe9", "the description is not UTF-8 text"),
    ],
)
def test_plain_copier_copy_ends_with_the_validators_message(data, says, template_copy, tmp_path):
    if isinstance(data, bytes) and os.name != "posix":
        pytest.skip("bytes in a command line are POSIX")
    result = copier_copy(template_copy, tmp_path / "proj", data)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert says in last and "Value error" not in last, result.stderr
    assert not (tmp_path / "proj").exists()


@pytest.mark.parametrize("name", ["_folder_name", "_copier_conf", "_copier_python"])
def test_copier_copy_given_one_of_copiers_own_names_writes_nothing(name, template_copy, tmp_path):
    # Copier fails on these before any question (a TypeError in its render context), so
    # copier.yml cannot refuse them itself: the README says so. Nothing may be written.
    result = copier_copy(template_copy, tmp_path / "proj", f"{name}=x")
    assert result.returncode != 0
    assert not (tmp_path / "proj").exists()
