"""The `scaffold` command: `scaffold new DEST`, `scaffold matrix`, `scaffold --version`.

Copier is imported only by `new`, and torch and lightning never, so `scaffold --help` is quick.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from generator import __version__
from generator.questions import MATRIX_AXES, load_questions, matrix, template_root

app = typer.Typer(
    help="Generate a deep-learning project (plain PyTorch or Lightning) that trains on day one.",
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,
)


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


def new(dest: Path, defaults: bool, force: bool, **answers: str | None) -> None:
    """Generate a project in DEST.

    Every question of the template has a flag. Missing answers are asked for in a terminal;
    with --defaults, or when no terminal is attached, they take their default values.
    """
    if dest.exists() and not dest.is_dir():
        raise typer.BadParameter(f"{dest} is a file; give a folder to create", param_hint="DEST")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise typer.BadParameter(
            f"{dest} is not empty; choose a new folder, or pass --force to write into it "
            "(only files the template makes are overwritten)",
            param_hint="DEST",
        )
    data = {name: value for name, value in answers.items() if value is not None}
    interactive = not defaults and sys.stdin.isatty() and sys.stdout.isatty()

    from copier import run_copy
    from copier.errors import DirtyLocalWarning

    root = template_root()
    with warnings.catch_warnings():
        # From a git checkout, Copier renders HEAD plus uncommitted changes: expected here.
        warnings.simplefilter("ignore", DirtyLocalWarning)
        try:
            run_copy(
                str(root),
                dest,
                data=data,
                # A checkout's HEAD, not its latest tag; a wheel's copy has no git at all.
                vcs_ref="HEAD" if (root / ".git").exists() else None,
                defaults=not interactive,
                overwrite=force,
                quiet=not interactive,
            )
        except ValueError as error:  # an answer that a copier.yml validator refused
            raise _refused_answer(str(error)) from None
    if not interactive:
        typer.echo(f"Generated {dest}. Next: cd {dest} && pip install -e '.[dev]' && see README.md")


def _refused_answer(message: str) -> typer.BadParameter:
    """Copier's "Validation error for question 'x': why" as a usage error on --x."""
    message = message.strip().splitlines()[-1]
    match = re.match(r"Validation error for question '(\w+)': (.*)", message)
    if not match:
        return typer.BadParameter(message)
    flag = next((q.flag for q in load_questions() if q.name == match[1]), match[1])
    return typer.BadParameter(match[2], param_hint=flag)


def _new_signature() -> inspect.Signature:
    """`new`'s parameters: DEST, --defaults, --force, and one flag per copier.yml question."""
    params = [
        inspect.Parameter(
            "dest",
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            annotation=Annotated[
                Path, typer.Argument(metavar="DEST", help="Folder to create the project in.")
            ],
        ),
        inspect.Parameter(
            "defaults",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool, typer.Option("--defaults", help="Take defaults for every missing answer.")
            ],
        ),
        inspect.Parameter(
            "force",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[
                bool, typer.Option("--force", help="Write into a folder that is not empty.")
            ],
        ),
    ]
    for question in load_questions():
        # A Literal of the choices makes typer refuse other values and list the valid ones.
        kind = Literal[question.choices] if question.choices else str
        help_text = question.help + (f" [default: {question.default}]" if question.default else "")
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
    return inspect.Signature(params)


new.__signature__ = _new_signature()
app.command()(new)


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
    except typer.TyperException as error:  # bad flags or values, a refused answer
        typer.echo(f"error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    sys.exit(code or 0)
