"""The questions of copier.yml, read once.

copier.yml is the single source of truth: the `scaffold new` flags, `scaffold matrix` and the
test matrix are all derived from it here, never listed by hand.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from pathlib import Path

import yaml

# The answers that change what the generated code does. A combination is valid when each
# answer is asked (its question's `when` holds) or is the question's default: tabular
# regression has no pretrained backbone, so its projects are all `backbone: scratch`.
MATRIX_AXES = ("task", "framework", "hardware", "backbone")

# Flags whose name is not the question's own (`--name` reads better than `--project-name`).
# The multi-select question, `extras`, is `--with X` (repeatable); `scaffold update` adds
# `--without X` to drop one.
FLAG_NAMES = {"project_name": "name", "extras": "with"}
EXTRAS = "extras"


@dataclass(frozen=True)
class Question:
    """One visible question of copier.yml."""

    name: str
    help: str
    choices: tuple[str, ...] | None
    default: str | None  # None where copier.yml derives the default from other answers
    when: str | bool = True  # whether it is asked: a Jinja expression of earlier answers
    multiselect: bool = False  # the answer is a list of some of the choices
    default_template: str | None = None  # the Jinja expression of a derived default

    @property
    def flag(self) -> str:
        return "--" + FLAG_NAMES.get(self.name, self.name).replace("_", "-")


def template_root() -> Path:
    """The folder that holds copier.yml: the checkout, or the copy bundled in the wheel."""
    package = Path(__file__).resolve().parent
    for root in (package.parent, package / "_template"):
        if (root / "copier.yml").is_file() and (root / "template").is_dir():
            return root
    raise FileNotFoundError(f"copier.yml not found next to {package}; reinstall torch-scaffold")


@functools.cache
def load_questions() -> tuple[Question, ...]:
    """The questions a user answers, in copier.yml order (settings and derived values left out)."""
    spec = yaml.safe_load((template_root() / "copier.yml").read_text(encoding="utf-8"))
    questions = []
    for name, options in spec.items():
        if name.startswith("_") or options.get("when") is False:
            continue
        choices = options.get("choices")
        if isinstance(choices, dict):  # {label: value}
            choices = tuple(str(value) for value in choices.values())
        elif choices is not None:
            choices = tuple(str(value) for value in choices)
        default = template = options.get("default")
        if isinstance(default, str) and "{{" in default:
            default = None
        else:
            template = None
        questions.append(
            Question(
                name=name,
                help=options.get("help", name),
                choices=choices,
                default=None if default is None else str(default),
                when=options.get("when", True),
                multiselect=bool(options.get("multiselect", False)),
                default_template=template,
            )
        )
    return tuple(questions)


def question(name: str) -> Question:
    return next(q for q in load_questions() if q.name == name)


def asked(question: Question, answers: dict[str, str]) -> bool:
    """Whether Copier asks `question` after these answers (its `when`, rendered as Copier does)."""
    if isinstance(question.when, bool):
        return question.when
    rendered = render(question.when, answers)
    return rendered.strip().lower() not in ("false", "0", "no", "off", "")


def render(expression: str, answers: dict) -> str:
    """A Jinja expression of copier.yml rendered with these answers (without Copier)."""
    import jinja2

    return jinja2.Environment().from_string(expression).render(**answers)


def default_extras(hardware: str) -> list[str]:
    """The extras a project of this hardware gets by default (copier.yml's default)."""
    rendered = render(question(EXTRAS).default_template or "[]", {"hardware": hardware})
    return list(yaml.safe_load(rendered) or [])


def matrix() -> list[dict[str, str]]:
    """Every valid combination of the matrix axes, in copier.yml's order: an answer of a
    question that is not asked (see `asked`) can only be its default."""
    axes = [question(axis) for axis in MATRIX_AXES]
    rows = []
    for values in itertools.product(*(axis.choices for axis in axes)):
        row = dict(zip(MATRIX_AXES, values, strict=True))
        if all(asked(axis, row) or row[axis.name] == axis.default for axis in axes):
            rows.append(row)
    return rows
