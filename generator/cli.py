"""The `scaffold` command: `new`, `update`, `matrix` and `--version`.

Copier is imported only by `new` and `update`, and torch and lightning never, so that
`scaffold --help` is quick.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import re
import shlex
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from generator import __version__
from generator.questions import EXTRAS, MATRIX_AXES, default_extras, load_questions, matrix
from generator.questions import question as question_named

app = typer.Typer(
    help="Generate a deep-learning project (plain PyTorch or Lightning) that trains on day one.",
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)


class Failure(typer.TyperException):
    """Something went wrong while working (not a bad flag): one line, exit code 1."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def format_message(self) -> str:
        return self.message


class Refused(Failure):
    """A problem the user can fix that no flag's value caused (a file, a path): exit code 2."""

    exit_code = 2


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"torch-scaffold {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def scaffold(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Generate a deep-learning project (plain PyTorch or Lightning) that trains on day one."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


def warn(message: str) -> None:
    typer.echo(f"warning: {message}", err=True)


def _terminal(defaults: bool) -> bool:
    return not defaults and sys.stdin.isatty() and sys.stdout.isatty()


@contextmanager
def _copier_warnings_silenced():
    """Copier's warnings about the checkout it clones: `scaffold` says what matters itself."""
    from copier.errors import DirtyLocalWarning, ShallowCloneWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DirtyLocalWarning)
        warnings.simplefilter("ignore", ShallowCloneWarning)
        yield


# --- scaffold new ------------------------------------------------------------------------


def new(dest: Path, defaults: bool, force: bool, git: bool, **answers) -> None:
    """Generate a project in DEST, named after DEST unless --name is given.

    Every question of the template has a flag; the extras are `--with X`, once per extra.
    Missing answers are asked for in a terminal; with --defaults, or when no terminal is
    attached, they take their default values. The project becomes a git repository with a
    first commit (unless --no-git, or DEST is inside another git work tree), so that
    `scaffold update` works from day one.
    """
    from generator import project

    created = _check_destination(dest, force)
    had_files = dest.is_dir() and any(dest.iterdir())
    extras = answers.pop(EXTRAS, None)  # [] when no --with: asked, or the default
    data = {name: value for name, value in answers.items() if value is not None}
    if extras:
        data[EXTRAS] = extras
    source = project.template_source()
    _warn_about_an_outer_work_tree(dest, source, git)
    try:
        from copier import run_copy

        with _copier_warnings_silenced():
            worker = run_copy(
                str(source.path),
                dest,
                data=data,
                vcs_ref=source.vcs_ref,
                defaults=not _terminal(defaults),
                overwrite=force,
                quiet=True,
                # A package must not shadow a module importable where it is made.
                user_defaults={"environment_modules": " ".join(project.importable_modules())},
            )
    except ValueError as error:  # an answer that a copier.yml validator refused
        _remove(created)
        raise _refused_answer(str(error), given=set(data)) from None
    except OSError as error:
        _remove(created)
        raise Failure(f"cannot write {dest}: {error.strerror or error}") from None
    except BaseException:
        _remove(created)
        raise
    if source.published:
        project.record_source(dest, *source.published)
    if source.warning:
        warn(source.warning)

    given = worker.answers.combined
    if not git:
        repository = "no git repository (--no-git)"
    elif had_files:  # a commit would take in files that are not the template's
        repository = "no git repository (DEST had files already: commit what you want yourself)"
    else:
        repository = _make_repository(dest, given)
    extras = f", with {_listed(given[EXTRAS])}" if given.get(EXTRAS) else ""
    typer.echo(
        f"Generated {dest}: command `{given['project_slug']}`, package "
        f"`{given['package_name']}`{extras}, {repository}.\n"
        f"Next: cd {shlex.quote(str(dest))} && pip install -e '.[dev]' && "
        f"{given['project_slug']} train"
    )


def _check_destination(dest: Path, force: bool) -> Path | None:
    """Refuse a DEST that cannot be made; return the first folder `new` creates, if any."""
    parts = dest.parts
    for index, part in enumerate(parts):
        # a/nosuchdir/../x would create a/nosuchdir on the way, and leave it behind.
        if part == ".." and index and not Path(*parts[:index]).is_dir():
            raise typer.BadParameter(
                f"{Path(*parts[:index])} does not exist, so {dest} cannot go through it; "
                "give a path without '..'",
                param_hint=["DEST"],
            )
    if dest.exists() and not dest.is_dir():
        raise typer.BadParameter(f"{dest} is a file; give a folder to create", param_hint=["DEST"])
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise typer.BadParameter(
            f"{dest} is not empty; choose a new folder, or pass --force to write into it "
            "(only files the template makes are overwritten)",
            param_hint=["DEST"],
        )
    target = Path(os.path.normpath(os.path.abspath(dest)))
    existing = target
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise typer.BadParameter(
            f"{existing} is a file, so {dest} cannot be made under it; give another folder",
            param_hint=["DEST"],
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise typer.BadParameter(
            f"cannot create {dest}: {existing} is not writable; give a folder you can write to",
            param_hint=["DEST"],
        )
    if existing == target:
        return None
    return existing / target.relative_to(existing).parts[0]


def _warn_about_an_outer_work_tree(dest: Path, source, git: bool) -> None:
    """Say, before writing, that DEST goes into a git work tree that is not the project's own:
    the template checkout this `scaffold` runs from (as a README typed in the clone would do),
    or another repository (unless --no-git)."""
    from generator import project

    outer = project.work_tree_of(dest.parent)
    if outer is None:
        return
    outside = Path(os.path.relpath(outer.parent / Path(os.path.abspath(dest)).name))
    checkout = project.work_tree_of(source.path) if source.vcs_ref else None
    if checkout is not None and checkout.resolve() == outer.resolve():
        warn(
            f"{dest} is inside {outer}, the torch-scaffold checkout this scaffold runs from: the "
            "project will be untracked files of the template's repository, with no repository "
            f"of its own; to avoid that, make it outside: scaffold new {shlex.quote(str(outside))}"
        )
    elif git:
        warn(
            f"{dest} is inside the git work tree {outer}: the project will be part of that "
            "repository (commit it there), with no repository of its own; for one, make it "
            f"outside, e.g. scaffold new {shlex.quote(str(outside))}"
        )


def _remove(created: Path | None) -> None:
    if created is not None and created.exists():
        shutil.rmtree(created, ignore_errors=True)


def _make_repository(dest: Path, answers: dict) -> str:
    """`git init` and a first commit; says what was done, for the final message."""
    from generator import project

    if not shutil.which("git"):
        warn("git not found: make the project a repository before `copier update` needs it")
        return "no git repository (git not found)"
    outer = project.work_tree_of(dest.parent)
    if outer is not None:
        return f"inside the git work tree {outer} (commit it there; no nested repository made)"
    message = f"Generated by torch-scaffold {__version__}: " + ", ".join(
        answers[axis] for axis in MATRIX_AXES
    )
    try:
        project.make_repository(dest, answers["author_name"], answers["author_email"], message)
    except project.GitError as error:
        warn(f"git could not make the first commit ({error}); commit the project yourself")
        return "a git repository without a commit"
    return "a git repository with a first commit"


def _refused_answer(message: str, given: set[str]) -> typer.BadParameter:
    """Copier's "Validation error for question 'x': why" as a usage error on the right flag.

    A derived name is blamed on where it came from: the package name on --name (or DEST),
    the project name on DEST when no --name was given.
    """
    refusal = _refusal(message)
    if refusal is None:
        return typer.BadParameter(message.strip().splitlines()[-1])
    name, reason = refusal
    flags = {q.name: q.flag for q in load_questions()}
    if name == "package_name" and name not in given:
        problem = reason.rsplit(": ", 1)[0]
        if "project_name" in given:
            return typer.BadParameter(
                f"its package name {problem}; choose another --name, or pass --package-name NAME",
                param_hint=["--name"],
            )
        return typer.BadParameter(
            f"the project is named after this folder, and its package name {problem}; "
            "pass --name NAME or --package-name NAME",
            param_hint=["DEST"],
        )
    if name == "project_name" and name not in given:
        return typer.BadParameter(
            f"the project is named after this folder: {reason}; or pass --name NAME",
            param_hint=["DEST"],
        )
    return typer.BadParameter(reason, param_hint=[flags.get(name, name)])


def _refusal(message: str) -> tuple[str, str] | None:
    """(question, reason) of Copier's refusal of an answer: a validator's, or a bad choice."""
    message = message.strip().splitlines()[-1]
    match = re.match(r"(?:Validation error for question|Invalid choice for) '(\w+)': (.*)", message)
    return (match[1], match[2]) if match else None


# --- scaffold update ---------------------------------------------------------------------


def update(
    project_dir: Path,
    vcs_ref: str | None,
    defaults: bool,
    without: list[str] | None = None,
    **answers,
) -> None:
    """Bring template changes into PROJECT (default: here), keeping your edits.

    Answer flags switch an existing project: `scaffold update --framework raw` changes the
    engine and what depends on it, and keeps your model, data and config; `--with sweeps`
    adds an extra, `--without sweeps` removes one. The work tree must be committed first;
    after the update, files with conflict markers are listed (exit code 1).
    """
    from generator import project

    added, removed = answers.pop(EXTRAS, None) or [], without or []
    if both := [extra for extra in added if extra in removed]:
        raise typer.BadParameter(
            f"{_listed(both)} given to both --with and --without: keep one of the two",
            param_hint=["--without"],
        )
    answers_file = project_dir / project.ANSWERS_FILE
    if not answers_file.is_file():
        raise typer.BadParameter(
            f"{project_dir} has no {project.ANSWERS_FILE}: give the folder of a project made "
            "by torch-scaffold",
            param_hint=["PROJECT"],
        )
    top = project.work_tree_of(project_dir)
    if top is None:
        raise typer.BadParameter(
            f"{project_dir} is not in a git repository, which an update needs; run "
            "`git init && git add -A && git commit -m 'Generated by torch-scaffold'` there first",
            param_hint=["PROJECT"],
        )
    dirty = project.changed_files(project_dir)
    nested = top.resolve() != project_dir.resolve()
    if dirty and nested and not project.is_tracked(project_dir, project.ANSWERS_FILE):
        # `scaffold new` inside another work tree: the project's files are that repository's.
        raise typer.BadParameter(
            f"{project_dir} is not committed in the git repository {top} that holds it: commit "
            f"it there, or move it out of {top} and make it a repository of its own (git init)",
            param_hint=["PROJECT"],
        )
    if dirty:
        raise typer.BadParameter(
            f"{project_dir} has uncommitted changes ({project.summary(dirty)}); "
            "commit or stash them, then update",
            param_hint=["PROJECT"],
        )
    try:
        before = project.read_answers(project_dir)
    except project.AnswersError as error:
        raise Refused(str(error)) from None
    if not before.get("_src_path") or not before.get("_commit"):
        raise Refused(
            f"{answers_file} does not say which template version made the project "
            f"(_src_path and _commit); set them, e.g. _src_path: {project.public_url()} "
            "and _commit: the release tag it was made from"
        )
    src, commit = str(before["_src_path"]), str(before["_commit"])
    if project.is_local_path(src) and not (project_dir / Path(src).expanduser()).is_dir():
        raise Refused(
            f"{answers_file} records the template at {src} (_src_path), which is not a folder "
            f"here: set _src_path to a torch-scaffold checkout, or to its git URL "
            f"({project.public_url()}), commit, then update"
        )
    flags = {name: value for name, value in answers.items() if value is not None}
    # The project's answers go in as given ones, so that Copier checks each against the new
    # template and refuses a bad one, where it would drop it silently and take the default.
    names = {question.name for question in load_questions()}
    data = {name: value for name, value in before.items() if name in names} | flags
    had, note = _extras_of(before, removed, answers_file)
    if added or removed or EXTRAS not in before:
        choices = question_named(EXTRAS).choices
        data[EXTRAS] = [c for c in choices if (c in had or c in added) and c not in removed]
        if added or removed:
            flags[EXTRAS] = data[EXTRAS]
    installed = project.requirements(project_dir / "pyproject.toml")
    here = Path.cwd()
    os.chdir(project_dir)  # a relative _src_path is relative to the project
    try:
        ref, warning = project.update_ref(src, commit, vcs_ref)
        if warning:
            warn(warning)
        _run_update(data, ref, defaults)
    except ValueError as error:  # an answer that a copier.yml validator refused, or a bad ref
        if vcs_ref and str(error).startswith("Unknown revision"):
            raise typer.BadParameter(
                f"the template {src} has no tag or commit {vcs_ref!r}: give one it has "
                "(its releases: git tag --list 'v*')",
                param_hint=["--vcs-ref"],
            ) from None
        raise _refused_in_update(error, flags, before, answers_file) from None
    except project.SourceError as error:  # the recorded commit: the answers file's to fix
        raise Refused(str(error)) from None
    finally:
        os.chdir(here)

    after = project.read_answers(project_dir)
    changed = project.changed_files(project_dir)
    # Your settings in configs/default.yaml beside lines the template changed: set in its new file.
    settings = project.resolve_settings_conflict(project_dir)
    switched = [
        f"{name} {before.get(name)} -> {after.get(name)}"
        for name in flags
        if name != EXTRAS and before.get(name) != after.get(name)
    ]
    now = after.get(EXTRAS) or []
    extras = [f"+{x}" for x in now if x not in had] + [f"-{x}" for x in had if x not in now]
    if extras:
        switched.append("extras " + " ".join(extras))
    if note:
        typer.echo(note)
    if settings:
        typer.echo(
            f"{project.SETTINGS_FILE}: the template's new file, with your settings in it "
            f"({', '.join(settings)})"
        )
    name = project_dir.resolve().name if str(project_dir) == "." else project_dir
    typer.echo(
        f"Updated {name}: template {before['_commit']} -> {after.get('_commit')}"
        + "".join(f", {change}" for change in switched)
        + f"; {len(changed)} file(s) changed"
        + (": review them with `git diff`, then commit." if changed else ".")
    )
    now = project.requirements(project_dir / "pyproject.toml")
    typer.echo(project.reinstall_advice(installed, now))
    conflicts = project.conflict_markers(project_dir, changed)
    for name, line, text in conflicts:
        typer.echo(f"conflict: {name} (line {line}: {text[:40]})", err=True)
    if conflicts:
        raise Failure(
            f"{len(conflicts)} file(s) hold conflict markers from the update: resolve them "
            "(keep the lines you want between <<<<<<< and >>>>>>>), then commit"
        )


def _extras_of(
    answers: dict, removed: list[str], answers_file: Path
) -> tuple[list[str], str | None]:
    """The extras a project has, and, for a project made before `extras` was a question, the
    line that says what it keeps: what it had then, less those of --without."""
    from generator import project

    if EXTRAS in answers:
        recorded = answers[EXTRAS]
        return (list(recorded) if isinstance(recorded, list) else []), None
    had = project.extras_before_the_question(answers)
    kept = [extra for extra in had if extra not in removed]
    dropped = [extra for extra in had if extra in removed]
    note = (
        f"{answers_file} has no extras answer (the project was made before extras were a "
        f"question): it keeps the ones it had, {_listed(kept) or 'none'}"
        + (f" ({_listed(dropped)} dropped by --without)" if dropped else "")
    )
    return had, note


def _listed(names: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else "".join(names)


def _refused_in_update(
    error: ValueError, flags: dict[str, str], recorded: dict, answers_file: Path
) -> typer.TyperException:
    """A refused answer in an update, blamed on where it came from: the flag that gave it, or
    the project's answers file (with the flag that replaces it), never a flag not given."""
    message = str(error)
    refusal = _refusal(message)
    if refusal is None:
        return Failure(message.strip().splitlines()[-1])
    name, reason = refusal
    flag = {q.name: q.flag for q in load_questions()}.get(name, f"--{name}")
    problem = reason.rsplit(": ", 1)[0]
    if _in_the_replay_of_the_old_version(error):  # a flag cannot help: the recorded answer
        return Refused(
            f"{name} in {answers_file}: {problem}, and the template version that made the "
            f"project refuses it too: fix {name} there by hand, commit, then update"
        )
    if name in flags:
        return typer.BadParameter(reason, param_hint=[flag])
    where = f"in {answers_file}" if name in recorded else f"(derived; not in {answers_file})"
    value = "NAME" if name.endswith("name") else "VALUE"
    return Refused(f"{name} {where}: {problem}; pass {flag} {value}, or fix it there and commit")


def _in_the_replay_of_the_old_version(error: BaseException) -> bool:
    """Whether Copier refused while rendering the project's own template version again (into
    its temporary `old_copy` folder), which it does with the recorded answers, before any flag."""
    traceback = error.__traceback__
    while traceback is not None:
        worker = traceback.tb_frame.f_locals.get("self")
        destination = str(getattr(worker, "dst_path", ""))
        if type(worker).__name__ == "Worker" and ".old_copy." in destination:
            return True
        traceback = traceback.tb_next
    return False


def _run_update(data: dict[str, str], ref: str | None, defaults: bool) -> None:
    from copier import run_update
    from copier.errors import CopierError

    try:
        with _copier_warnings_silenced():
            run_update(
                ".",
                data=data,
                vcs_ref=ref,
                defaults=not _terminal(defaults),
                skip_answered=True,  # ask only questions the project has no answer to
                overwrite=True,
                conflict="inline",
                quiet=True,
                unsafe=False,
            )
    except CopierError as error:
        raise Failure(str(error).strip().splitlines()[-1]) from None


# --- the commands' parameters, one flag per copier.yml question -------------------------


def _question_parameters(for_update: bool = False) -> list[inspect.Parameter]:
    params = []
    for question in load_questions():
        if question.multiselect:
            params += _extras_parameters(question, for_update)
            continue
        # A Literal of the choices makes typer refuse other values and list the valid ones.
        kind = Literal[question.choices] if question.choices else str
        if for_update:  # no default: a flag left out keeps the project's answer
            help_text = question.help + " [changes the project's answer]"
        else:
            default = f" [default: {question.default}]" if question.default else ""
            help_text = question.help + default
        params.append(
            inspect.Parameter(
                question.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    Optional[kind],  # noqa: UP045 - typer reads this annotation at run time
                    typer.Option(question.flag, help=help_text, show_default=False),
                ],
            )
        )
    return params


def _extras_parameters(question, for_update: bool) -> list[inspect.Parameter]:
    """`--with X`, repeatable: the extras answer of `new`, an extra added by `update`; and
    `--without X` for `update`, an extra removed."""
    choices = ", ".join(question.choices)
    if for_update:
        helps = {
            "--with": f"Add an extra ({choices}; repeatable) [changes the project's answer]",
            "--without": "Remove an extra, its files, code and dependencies (repeatable)",
        }
    else:
        by_hardware = [
            f"{_listed(extras)} with --hardware {hardware}"
            for hardware in question_named("hardware").choices or ()
            if (extras := default_extras(hardware))
        ]
        default = "; ".join(by_hardware) + ", else none" if by_hardware else "none"
        helps = {
            "--with": f"An extra to include, once per extra: {choices}; each leaves no file, "
            f"code or dependency when not chosen [default: {default}]"
        }
    params = []
    for flag, help_text in helps.items():
        params.append(
            _option(
                question.name if flag == question.flag else flag.removeprefix("--"),
                None,
                Annotated[
                    Optional[list[str]],  # noqa: UP045 - typer reads this annotation at run time
                    typer.Option(
                        flag,
                        metavar="EXTRA",
                        help=help_text,
                        show_default=False,
                        callback=_check_extras,
                    ),
                ],
            )
        )
    return params


def _check_extras(values: list[str] | None) -> list[str]:
    """--with and --without values: extras of copier.yml (a comma also separates them), in
    copier.yml's order; an unknown one is refused naming the nearest and the valid ones."""
    choices = question_named(EXTRAS).choices
    given = [item.strip() for value in values or () for item in value.split(",")]
    for value in given:
        if value not in choices:
            nearest = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            valid = ", ".join(f"'{choice}'" for choice in choices)
            guess = f"; did you mean '{nearest[0]}'?" if nearest else ""
            raise typer.BadParameter(f"'{value}' is not one of {valid}{guess}")
    return [choice for choice in choices if choice in given]


def _option(name: str, default, annotation) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def _defaults_option() -> inspect.Parameter:
    return _option(
        "defaults",
        False,
        Annotated[bool, typer.Option("--defaults", help="Take defaults for every missing answer.")],
    )


def _new_signature() -> inspect.Signature:
    """`new`'s parameters: DEST, --defaults, --force, --no-git, and a flag per question."""
    dest = inspect.Parameter(
        "dest",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        annotation=Annotated[
            Path,
            typer.Argument(metavar="DEST", help="Folder to create; the project is named after it."),
        ],
    )
    force = _option(
        "force",
        False,
        Annotated[bool, typer.Option("--force", help="Write into a folder that is not empty.")],
    )
    git = _option(
        "git",
        True,
        Annotated[
            bool,
            typer.Option("--git/--no-git", help="Make DEST a git repository with a first commit."),
        ],
    )
    return inspect.Signature([dest, _defaults_option(), force, git, *_question_parameters()])


def _update_signature() -> inspect.Signature:
    """`update`'s parameters: PROJECT, --vcs-ref, --defaults, and a flag per question."""
    project_dir = inspect.Parameter(
        "project_dir",
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=Path("."),
        annotation=Annotated[
            Path,
            typer.Argument(metavar="PROJECT", help="The project to update.", show_default="here"),
        ],
    )
    vcs_ref = _option(
        "vcs_ref",
        None,
        Annotated[
            Optional[str],  # noqa: UP045 - typer reads this annotation at run time
            typer.Option(
                "--vcs-ref",
                help="Template version to update to (a tag or commit; :current: keeps the "
                "project's). Default: the latest release, or a checkout's last commit.",
                show_default=False,
            ),
        ],
    )
    questions = _question_parameters(for_update=True)
    return inspect.Signature([project_dir, vcs_ref, _defaults_option(), *questions])


new.__signature__ = _new_signature()
app.command()(new)
update.__signature__ = _update_signature()
app.command()(update)


@app.command("matrix")
def show_matrix(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print a GitHub Actions strategy.matrix (include:).")
    ] = False,
) -> None:
    """List every valid task x framework x hardware combination."""
    rows = matrix()
    if as_json:
        typer.echo(json.dumps({"include": rows}))
        return
    for row in rows:
        typer.echo("  ".join(f"{row[axis]:<20}" for axis in MATRIX_AXES).rstrip())


def main() -> None:
    """Console-script entry point: a usage error is one line on stderr and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except typer.TyperException as error:  # bad flags or values, a refused answer, a failure
        if isinstance(error, typer.BadParameter):
            # Typer checks values with pydantic, whose messages start "Value error, ".
            error.message = error.message.removeprefix("Value error, ")
        typer.echo(f"error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code or 0)
