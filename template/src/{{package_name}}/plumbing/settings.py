"""Reading the settings: config.py's defaults <- configs/default.yaml <- --config files, in
order <- the command line's flags, `--set` and `key=value` overrides.

Names and types are checked against config.py's dataclasses; an unknown key or a bad value
is one line naming it. The optional extras (sweep, trackers) are checked here too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from ..config import Config
from . import ConfigError, UserError

DEFAULT_FILE = Path("configs/default.yaml")
ACCELERATORS = ("cpu", "gpu", "mps", "auto")
PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
# The optional extras of pyproject.toml, by the package each one brings.
EXTRAS = {"optuna": "sweep", "mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}


def require_extra(package: str, purpose: str) -> None:
    """Refuse at once, naming the extra to install, when an optional package is missing."""
    if importlib.util.find_spec(package) is None:
        raise UserError(
            f"{purpose} needs {package}, which is not installed: "
            f'pip install -e ".[{EXTRAS[package]}]"'
        )


def load_config(
    files: Iterable[str | Path] = (),
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """The defaults, then `base` (a checkpoint's config), the YAML files in order (a later
    one wins), then dotted overrides such as {"train.lr": 0.01} (None values are skipped)."""
    cfg = Config()
    if base is not None:
        merge(cfg, base, "the checkpoint")
    for path in files:
        merge(cfg, read_yaml(Path(path)), str(path))
    for key, value in (overrides or {}).items():
        if value is not None:
            section, _, name = key.partition(".")
            merge(cfg, {section: {name: value}}, "the command line")
    check(cfg)
    return cfg


def config_files(given: list[Path] | None) -> list[Path]:
    """configs/default.yaml (when it exists), then the --config files: they layer."""
    files = [DEFAULT_FILE] if DEFAULT_FILE.is_file() else []
    return files + [path for path in given or [] if path.resolve() not in map(Path.resolve, files)]


def config_text(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {path} {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(("<<<<<<<", "=======", ">>>>>>>")):  # a merge or `copier update`
            raise ConfigError(
                f"{path} has unresolved merge conflict markers (line {number}: {line[:40]}); "
                "resolve them, then commit"
            )
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}".splitlines()[0]) from None
    if not isinstance(values, dict | None):
        raise ConfigError(f"{path} must hold sections data:, model:, train:")
    return values or {}


def parse_assignment(text: str) -> tuple[str, Any]:
    """'model.width=64' -> ('model.width', 64), the value read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise ConfigError(f"expected SECTION.KEY=VALUE, e.g. train.lr=1e-3; got '{text}'")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError:
        raise ConfigError(f"{text}: '{value}' is not a value; quote it") from None


def merge(cfg: Config, values: dict[str, Any], source: str) -> None:
    """Set the values of a {section: {key: value}} mapping, checking names and types."""
    for section_name, section_values in values.items():
        section = getattr(cfg, str(section_name), None)
        if not dataclasses.is_dataclass(section):
            raise ConfigError(
                f"unknown section '{section_name}' in {source}; expected data, model or train"
            )
        if not isinstance(section_values, dict | None):
            raise ConfigError(f"section '{section_name}' in {source} must be a mapping")
        hints = get_type_hints(type(section))
        for key, value in (section_values or {}).items():
            if key not in hints:
                raise ConfigError(
                    f"unknown key '{section_name}.{key}' in {source}; "
                    f"valid keys: {', '.join(hints)}"
                )
            kind = hints[key]
            setattr(section, key, coerce(value, kind, f"{section_name}.{key}", source))


def coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    """`value` as the field's type: int, float, bool, str, a list of one of them, or None
    where the type allows it."""
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    options = typing.get_args(kind) if union else (kind,)
    if value is None and type(None) in options:
        return None
    target = options[0]
    if typing.get_origin(target) is list:
        (item,) = typing.get_args(target)
        items = value if isinstance(value, list) else [value]
        return [coerce(each, item, key, source) for each in items]
    try:
        if target is bool and isinstance(value, bool | str):
            lowered = str(value).lower()
            if lowered in ("true", "false"):
                return lowered == "true"
        elif target is int and not isinstance(value, bool):
            if isinstance(value, int) or (isinstance(value, str) and value.strip()):
                return int(value)
        elif target is float and not isinstance(value, bool):
            return float(value)
        elif target is str and isinstance(value, str | int | float):
            return str(value)
    except (ValueError, OverflowError):
        pass
    raise ConfigError(
        f"{key} must be {getattr(target, '__name__', target)}, got {value!r} (in {source})"
    )


def check(cfg: Config) -> None:
    """Refuse values that cannot work, naming the key and what would."""
    t = cfg.train
    finite = all(abs(x) < float("inf") for x in (t.lr, t.weight_decay, t.grad_clip))
    rules = [
        (t.max_steps >= 1, "train.max_steps must be at least 1"),
        (t.epochs is None or t.epochs >= 1, "train.epochs must be at least 1 (or null: no cap)"),
        (t.eval_every >= 1, "train.eval_every must be at least 1"),
        (
            t.eval_batches is None or t.eval_batches >= 1,
            "train.eval_batches must be at least 1 (or null: the whole validation split)",
        ),
        (t.batch_size >= 1, "train.batch_size must be at least 1"),
        (finite, "train.lr, train.weight_decay and train.grad_clip must be finite numbers"),
        (t.lr > 0, "train.lr must be positive"),
        (0 <= t.warmup_ratio < 1, "train.warmup_ratio must be in [0, 1)"),
        (t.accumulate >= 1, "train.accumulate must be at least 1"),
        (t.patience >= 0, "train.patience must be 0 (off) or more"),
        (t.tie_delta >= 0, "train.tie_delta must be 0 or more"),
        (t.devices == -1 or t.devices >= 1, "train.devices must be -1 (all) or at least 1"),
        (t.num_nodes >= 1, "train.num_nodes must be at least 1"),
        (t.num_workers >= 0, "train.num_workers must be 0 or more"),
        (t.accelerator in ACCELERATORS, f"train.accelerator must be one of {ACCELERATORS}"),
        (t.precision in PRECISIONS, f"train.precision must be one of {PRECISIONS}"),
        (t.logger in LOGGERS, f"train.logger must be one of {LOGGERS}"),
        (0 < cfg.data.val_split < 1, "data.val_split must be between 0 and 1"),
    ]
    folds, fold = cfg.data.folds, cfg.data.fold
    if folds is not None or fold is not None:
        rules.append((folds is not None and folds >= 2, "data.folds must be at least 2"))
        rules.append(
            (fold is not None and 1 <= fold <= (folds or 0), "data.fold must be 1 to data.folds")
        )
    if t.name is not None:
        one_component = Path(t.name).name == t.name and t.name not in ("", ".", "..")
        rules.append((one_component, f"--name '{t.name}' must be a folder name, without '/'"))
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
