"""Data for tabular regression: a built-in table, or your CSV file of numeric columns.

Your data: a CSV file with a header, numeric columns only; the column named `target` (or
--target NAME) is predicted from all the others. The inputs' and target's means and
standard deviations come from the training split and are saved with the checkpoint.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from .config import Config
from .plumbing import UserError
from .plumbing.splits import split_indices


class DataError(UserError):
    """Missing, empty or malformed data; the message names the file and the fix."""


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
    """Training and validation sets, and the metadata the model needs (columns, scaling).

    The scaling statistics come from the training split alone; a checkpoint's `meta` is
    reused.
    """
    if cfg.data.path is None:
        columns, x, y = make_table(2000, cfg.train.seed)
    else:
        columns, x, y = read_csv(Path(cfg.data.path), cfg.data.target)
    if len(y) < 4:
        raise DataError(
            f"{cfg.data.path} has too few rows ({len(y)}); tabular-regression needs at least 4 "
            "(two to train on, two to validate)"
        )
    # Two rows at least on each side: R2 needs two to validate, the scaling two to train.
    train_rows, val_rows = split_indices(len(y), cfg, min_val=2)
    if len(train_rows) < 2:
        raise DataError(
            f"{cfg.data.path}: --val-split {cfg.data.val_split} leaves fewer than two rows to "
            "train on; lower it"
        )
    if meta is None and bool((y == y[0]).all()):
        raise DataError(
            f"{cfg.data.path}: column '{cfg.data.target}' has the same value, {y[0].item():g}, "
            "on every row: there is nothing to learn; is it the right --target?"
        )
    if meta is None:
        x_train, y_train = x[train_rows], y[train_rows]
        meta = {
            "columns": columns,
            "target": cfg.data.target,
            "x_mean": x_train.mean(dim=0).tolist(),
            "x_std": x_train.std(dim=0).clamp(min=1e-6).tolist(),
            "y_mean": y_train.mean().item(),
            "y_std": y_train.std().clamp(min=1e-6).item(),
        }
    elif meta["columns"] != columns:
        raise DataError(
            f"the data has input columns {columns}, the checkpoint {meta['columns']}; "
            "use data with the same columns"
        )
    return (
        TensorDataset(x[train_rows], y[train_rows]),
        TensorDataset(x[val_rows], y[val_rows]),
        meta,
    )


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """Every row of a CSV file, for `evaluate --data`."""
    columns, x, y = read_csv(Path(path), meta["target"], meta["columns"])
    if len(y) < 2:
        raise DataError(f"{path} has {len(y)} row; R2 needs at least two to evaluate")
    return TensorDataset(x, y)


def read_csv(
    path: Path, target: str, columns: list[str] | None = None, need_target: bool = True
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Input columns, inputs (n, d) and targets (n,) of a CSV file of numbers.

    `columns` picks and orders the inputs (those the model was trained on); by default
    every column but the target is one.
    """
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        if path.exists() and not path.is_dir():  # a named pipe, a device...
            problem = "is not a regular file (a named pipe, a device...)"
        raise DataError(f"{path} {problem}; tabular-regression expects a CSV file")
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.DictReader(file)
            header = reader.fieldnames or []
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable UTF-8 CSV file ({error})") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise DataError(f"{path}: the header names column {twice[0]!r} twice; rename one")
    if need_target and target not in header:
        raise DataError(
            f"{path}: expected a CSV with a '{target}' column to predict (or pass --target NAME); "
            f"got columns {','.join(header) or '(none)'}"
        )
    if columns is None:
        columns = [name for name in header if name != target]
    missing = [name for name in columns if name not in header]
    if missing or not columns:
        raise DataError(f"{path}: missing input columns {missing or '(none at all)'}")
    if not rows:
        raise DataError(f"{path} has a header but no rows")
    wanted = columns + ([target] if need_target else [])
    values = torch.empty(len(rows), len(wanted))
    largest = torch.finfo(values.dtype).max
    for i, row in enumerate(rows):
        if None in row:  # more fields than the header
            raise DataError(
                f"{path}: line {i + 2} has {len(header) + len(row[None])} fields, the header "
                f"{len(header)}; quote values that contain commas"
            )
        if None in row.values():  # fewer
            fields = len(header) - list(row.values()).count(None)
            raise DataError(
                f"{path}: line {i + 2} has {fields} fields, the header {len(header)}; "
                "every row needs a value in each column"
            )
        for j, name in enumerate(wanted):
            try:
                value = float(row[name])
            except ValueError:
                raise DataError(
                    f"{path}: line {i + 2}, column '{name}': {row[name]!r} is not a number; "
                    "tabular-regression expects numeric columns"
                ) from None
            if not abs(value) <= largest:  # nan, inf, or too large for float32
                problem = "is not a finite number; fill it in or drop the row"
                if math.isfinite(value):
                    problem = f"is beyond float32's range (±{largest:.3g}); rescale the column"
                raise DataError(f"{path}: line {i + 2}, column '{name}': {row[name]!r} {problem}")
            values[i, j] = value
    if need_target:
        return columns, values[:, :-1], values[:, -1]
    return columns, values, torch.full((len(rows),), math.nan)


def make_table(n: int, seed: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """n rows of 8 random inputs and a smooth, partly non-linear target with some noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = 2 * x[:, 0] + torch.sin(2 * x[:, 1]) + x[:, 2] * x[:, 3] - 0.5 * x[:, 4].abs()
    y = y + 0.1 * torch.randn(n, generator=g)
    return [f"x{i}" for i in range(8)], x, y


# --- predict and export --------------------------------------------------------------


def predict(model: torch.nn.Module, inputs: list[str], meta: dict) -> list[str]:
    """A prediction for each row of each CSV file (the target column may be absent)."""
    lines = []
    for path in inputs:
        _, x, _ = read_csv(Path(path), meta["target"], meta["columns"], need_target=False)
        with torch.no_grad():
            predictions = model(x)
        lines += [
            f"{path}:{i + 2}: {meta['target']} = {value:.4g}"
            for i, value in enumerate(predictions.tolist())
        ]
    return lines


def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    return (torch.randn(2, len(meta["columns"])),), {"features": {0: batch}}
