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

# The three answers that change what the generated code does; every combination is valid.
MATRIX_AXES = ("task", "framework", "hardware")

# Flags whose name is not the question's own (`--name` reads better than `--project-name`).
FLAG_NAMES = {"project_name": "name"}


@dataclass(frozen=True)
class Question:
    """One visible question of copier.yml."""

    name: str
    help: str
    choices: tuple[str, ...] | None
    default: str | None  # None where copier.yml derives the default from other answers

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
        default = options.get("default")
        if isinstance(default, str) and "{{" in default:
            default = None
        questions.append(
            Question(
                name=name,
                help=options.get("help", name),
                choices=choices,
                default=None if default is None else str(default),
            )
        )
    return tuple(questions)


def question(name: str) -> Question:
    return next(q for q in load_questions() if q.name == name)


def matrix() -> list[dict[str, str]]:
    """Every valid combination of the matrix axes, in copier.yml's order."""
    axes = [question(axis).choices for axis in MATRIX_AXES]
    return [dict(zip(MATRIX_AXES, values, strict=True)) for values in itertools.product(*axes)]
