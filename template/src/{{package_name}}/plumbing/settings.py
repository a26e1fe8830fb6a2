"""Settings layered by OmegaConf: config.py's dataclasses <- a checkpoint's (on resume) <-
configs/default.yaml <- --config files <- flags and SECTION.KEY=VALUE; a bad one is one line.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import UserError

DEFAULT_FILE = Path("configs/default.yaml")
Config = TypeVar("Config")


def load_config(
    schema: type[Config],
    files: list[Path] = (),
    overrides: list[str] = (),
    flags: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> Config:
    """The settings of `schema` (config.py's Config): its defaults, then `base`, the YAML
    files in order (a later one wins), `flags` ({"model.width": 8}; None: not given) and the
    SECTION.KEY=VALUE `overrides`; checked by the dataclasses' own __post_init__."""
    merged = OmegaConf.structured(schema)
    layers = [("the checkpoint", base)] if base is not None else []
    layers += [(str(path), read_yaml(path)) for path in files]
    given = OmegaConf.create()
    for key, value in (flags or {}).items():
        if value is not None:
            OmegaConf.update(given, key, value)
    layers.append(("the command line", given))
    for item in overrides:
        if "=" not in item or "." not in item.partition("=")[0]:
            raise UserError(f"expected SECTION.KEY=VALUE, e.g. model.width=8; got '{item}'")
        default = OmegaConf.select(merged, item.partition("=")[0])
        if item.endswith("=") and default is not None:  # empty: not the default, nor None
            raise UserError(f"{item} has no value; give one, e.g. {item}{default} (the default)")
        layers.append(("the command line", OmegaConf.from_dotlist([item])))
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except OmegaConfBaseException as error:
            raise UserError(explain(error, source, schema)) from None
    try:
        return OmegaConf.to_object(merged)
    except ValueError as error:  # a value out of its range, from __post_init__
        raise UserError(str(error)) from None


def config_files(given: list[Path] | None) -> list[Path]:
    """configs/default.yaml (when there is one), then the --config files: they layer."""
    files = [DEFAULT_FILE] if DEFAULT_FILE.is_file() else []
    return files + [path for path in given or [] if path.resolve() not in map(Path.resolve, files)]


def read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise UserError(
            f"config file {path} {'is a folder' if path.is_dir() else 'does not exist'}"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith(("<<<<<<<", "=======", ">>>>>>>")):  # a merge or `copier update`
            raise UserError(
                f"{path} has unresolved merge conflict markers (line {number}); resolve them"
            )
    try:
        values = OmegaConf.create(text)
    except Exception as error:  # YAML's own errors: a duplicate key, a bad indent...
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise UserError(f"{path} is not valid YAML: {'; '.join(lines[:4])}") from None
    if not isinstance(values, DictConfig):
        raise UserError(f"{path} must hold sections (data:, model:, train:), not a list")
    for section in [key for key, value in values.items() if value is None]:
        del values[section]  # a section whose settings are all commented out
    return values


def explain(error: OmegaConfBaseException, source: str, schema: type) -> str:
    """OmegaConf's error in one line, with the nearest valid key for an unknown one."""
    key = getattr(error, "full_key", None) or "?"
    message = str(error).splitlines()[0]
    if "not in" in message or "Key '" in message:
        known = list(setting_names(schema))
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean {near[0]}?" if near else f"; the settings are in {DEFAULT_FILE}"
        return f"unknown setting {key} (in {source}){hint}"
    return f"{key}: {message.rstrip('.')} (in {source})"


def setting_names(schema: type, prefix: str = ""):
    """Every setting of the config's dataclasses, as SECTION.KEY."""
    for field in dataclasses.fields(schema):
        if dataclasses.is_dataclass(field.default_factory):  # a section, not a list
            yield from setting_names(field.default_factory, f"{field.name}.")
        else:
            yield prefix + field.name


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
