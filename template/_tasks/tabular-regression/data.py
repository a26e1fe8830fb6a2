"""Data for tabular regression: a built-in table, or your CSV file of numbers and text.

Your data: a CSV file with a header; the column named `target` (or data.target) is
predicted from the others. Each column's kind comes from the data: a column of numbers is
a numeric input, a column of text a categorical one, and a column that cannot help (an id,
a constant) is ignored; data.categorical and data.ignore override. Blank cells are allowed.
The schema (kinds, categories, medians, scaling) comes from the training rows, is logged
once and saved with the checkpoint: evaluate, predict and export encode rows with it.

pyarrow reads the file (a million rows in seconds, where the standard library's csv module
takes many times longer and gigabytes of memory); every cell is read as text, and the
columns whose cells are all numbers become numbers.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import torch
from torch.utils.data import Dataset

from .config import Config

log = logging.getLogger(__name__)

# The index of each categorical input: OTHER for a category seen on fewer than
# data.min_category_count training rows or never seen in training, MISSING for a blank
# cell, then 2, 3... for the categories of meta["categorical"][column], in order.
OTHER, MISSING = 0, 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
# What a number looks like, to tell a column of numbers with a stray word (an error to fix)
# from a column of text (categorical).
NUMBER = r"(?i)^\s*[+-]?((\d+\.?\d*|\.\d+)(e[+-]?\d+)?|nan|inf|infinity)\s*$"
GROUPED = r"^\s*[+-]?\d{1,3}(,\d{3})+(\.\d+)?\s*$"  # 8,444: thousands separated by commas


class DataError(Exception):
    """Missing, empty or malformed data; the message names the file, line or column and the fix."""


class Rows(Dataset):
    """Encoded rows: ((numeric, categorical), target) for each index.

    numeric: float inputs with NaN for blank cells (the model fills them in); categorical:
    category indices (see OTHER and MISSING).
    """

    def __init__(self, numeric: torch.Tensor, categorical: torch.Tensor, targets: torch.Tensor):
        self.numeric, self.categorical, self.targets = numeric, categorical, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return (self.numeric[i], self.categorical[i]), self.targets[i]


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
    """Training and validation sets, and the schema the model needs.

    Without `meta`, the schema is inferred from the training rows and logged; a
    checkpoint's `meta` is reused, so that its validation split is encoded as in training.
    """
    target = meta["target"] if meta else cfg.data.target
    if cfg.data.path is None:
        where, table = "the built-in table", make_table(2000, cfg.train.seed, target)
    else:
        where = cfg.data.path
        inputs = meta and [*meta["numeric"], *meta["categorical"]]
        table = read_table(Path(where), target, inputs)
    table, y, rows = rows_with_target(table, target, where)
    if len(y) < 4:
        raise DataError(
            f"{where} has too few rows ({len(y)}); tabular-regression needs at least 4 "
            "(two to train on, two to validate)"
        )
    train_rows, val_rows = split_indices(len(y), cfg)
    if len(val_rows) < 2:  # R2 needs two rows to validate
        train_rows, val_rows = train_rows[:-1], train_rows[-1:] + val_rows
    if len(train_rows) < 2:  # the scaling needs two to train on
        raise DataError(
            f"{where}: data.val_split {cfg.data.val_split} leaves fewer than two rows to "
            "train on; lower it"
        )
    train_rows, val_rows = np.array(train_rows), np.array(val_rows)  # fast to index with
    floats = None  # the numeric columns as numbers, when infer_schema converted them
    if meta is None:
        if (y == y[0]).all():
            raise DataError(
                f"{where}: column '{target}' has the same value, {y[0]:g}, on every row: "
                "there is nothing to learn; is it the right data.target?"
            )
        meta, floats = infer_schema(table, y[train_rows], rows, train_rows, cfg, where)
        log.info(describe_schema(meta))
    numeric, categorical = encode(table, meta, where, rows, floats)
    targets = torch.from_numpy(y.astype(np.float32))
    train, val = (Rows(numeric[i], categorical[i], targets[i]) for i in (train_rows, val_rows))
    return train, val, meta


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """Every row of a CSV file that has a target, for `evaluate --data`."""
    target = meta["target"]
    table = read_table(Path(path), target, [*meta["numeric"], *meta["categorical"]])
    table, y, rows = rows_with_target(table, target, path)
    if len(y) < 2:
        raise DataError(f"{path} has {len(y)} row with a '{target}'; R2 needs at least two")
    numeric, categorical = encode(table, meta, path, rows)
    return Rows(numeric, categorical, torch.from_numpy(y.astype(np.float32)))


# --- reading a CSV file ---------------------------------------------------------------------


def read_table(
    path: Path, target: str, columns: list[str] | None = None, need_target: bool = True
) -> pa.Table:
    """The cells of a CSV file as text (None for a blank cell), one column each.

    `columns` picks the inputs (those a model was trained on), by default every column;
    the target is read as well, unless `need_target` is False (predict).
    """
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        if path.exists() and not path.is_dir():  # a named pipe, a device...
            problem = "is not a regular file (a named pipe, a device...)"
        raise DataError(f"{path} {problem}; tabular-regression expects a CSV file")
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as file:
            header = next(csv.reader(file), [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable UTF-8 CSV file ({error})") from None
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise DataError(f"{path}: the header names column {twice[0]!r} twice; rename one")
    if need_target and target not in header:
        raise DataError(
            f"{path}: expected a CSV with a '{target}' column to predict (or set "
            f"data.target=NAME); got columns {','.join(header) or '(none)'}"
        )
    if columns is None:
        columns = [name for name in header if need_target or name != target]
    else:
        missing = [name for name in columns if name not in header]
        if missing:
            raise DataError(
                f"{path}: missing input columns {missing}; the model needs the columns it "
                f"was trained on: {', '.join(columns)}"
            )
        columns = columns + [target] * need_target
    options = pa_csv.ConvertOptions(
        column_types={name: pa.string() for name in header},
        include_columns=columns,
        null_values=[""],  # blank cells, quoted or not, are missing values
        strings_can_be_null=True,
    )
    try:
        try:
            table = pa_csv.read_csv(path, convert_options=options)
        except pa.ArrowInvalid:
            # A line break in a quoted cell (the csv module allows them) that fell between
            # the blocks pyarrow reads in parallel: read again without splitting there.
            newlines = pa_csv.ParseOptions(newlines_in_values=True)
            table = pa_csv.read_csv(path, parse_options=newlines, convert_options=options)
    except pa.ArrowInvalid as error:
        raise locate_problem(path, len(header), error) from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    if table.num_rows == 0:
        raise DataError(f"{path} has a header but no rows")
    return table


def csv_rows(path: str | Path) -> Iterator[tuple[int, list[str]]]:
    """(the line it starts on, its cells) for each row after the header, read by the csv
    module: slow, but it knows the lines that pyarrow's errors and rows do not name."""
    with Path(path).open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        next(reader, None)
        start = reader.line_num + 1
        for cells in reader:
            if cells:  # pyarrow skips empty lines too
                yield start, cells
            start = reader.line_num + 1


def locate_problem(path: Path, width: int, error: Exception) -> DataError:
    """The one-line error for a file that pyarrow refused, naming the line."""
    try:
        for line, cells in csv_rows(path):
            if len(cells) != width:
                fix = (
                    "quote values that contain commas"
                    if len(cells) > width
                    else "every row needs a value in each column (blank ones may be empty)"
                )
                return DataError(
                    f"{path}: line {line} has {len(cells)} fields, the header {width}; {fix}"
                )
    except (UnicodeDecodeError, csv.Error) as problem:
        return DataError(f"{path} is not a readable UTF-8 CSV file ({problem})")
    return DataError(f"{path} is not a readable CSV file ({str(error).splitlines()[0]})")


def line_of(where: str | Path, row: int) -> int:
    """The line of the file where data row `row` (0 for the first) starts."""
    if Path(where).is_file():
        for i, (line, _) in enumerate(csv_rows(where)):
            if i == row:
                return line
    return row + 2  # the built-in table: a line a row after the header


# --- numbers --------------------------------------------------------------------------------


def rows_with_target(
    table: pa.Table, target: str, where
) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """The rows that have a target (a blank one is skipped, and counted): the table, the
    targets as numbers, and the rows' places in the file (for the line of an error)."""
    column = table[target]
    if not looks_numeric(column):
        i = first_refused(column)
        raise DataError(
            f"{where}: column '{target}' holds text ({column[i].as_py()!r} on line "
            f"{line_of(where, i)}), and tabular-regression predicts numbers: set data.target "
            "to a column of numbers"
        )
    y = numbers(column, target, where, np.arange(len(column)))
    rows = np.flatnonzero(~np.isnan(y))
    if len(rows) < len(y):
        log.info(f"skipped {len(y) - len(rows)} rows of {where} with a blank '{target}'")
        table = table.take(rows)
    return table, y[rows], rows


def looks_numeric(column: pa.ChunkedArray) -> bool:
    """Whether most non-blank cells are numbers (judged on 10,000 cells at most): then the
    column is one of numbers, where a stray word is an error to fix, not of categories."""
    if len(column) > 10_000:
        column = column.take(np.linspace(0, len(column) - 1, 10_000).astype(np.int64))
    cells = pc.drop_null(column)
    numbers = pc.sum(pc.match_substring_regex(cells, f"{NUMBER}|{GROUPED}")).as_py() or 0
    return len(cells) == 0 or numbers * 2 > len(cells)


def numbers(
    column: pa.ChunkedArray, name: str, where, rows: np.ndarray, hint: str = ""
) -> np.ndarray:
    """A column of numbers as float64, NaN for blank cells; a cell that is not a number,
    not finite, or beyond float32's range is an error naming its line (`rows`: each row's
    place in the file) and column, ending with `hint`."""
    column = pc.utf8_trim_whitespace(column)  # " 3.5 " is 3.5
    try:
        values = pc.cast(column, pa.float64())  # blank cells stay null
    except pa.ArrowInvalid:
        i = first_refused(column)
        fix = "fix the cell (leave it blank if the value is unknown)"
        if pc.match_substring_regex(column[i], GROUPED).as_py():
            fix = "the column writes thousands with commas: remove them (8,444 as 8444)"
        raise DataError(
            f"{where}: line {line_of(where, rows[i])}, column '{name}': {column[i].as_py()!r} "
            f"is not a number; {fix}{hint}"
        ) from None
    array = pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)  # NaN: a blank cell
    # A NaN that was not a blank cell, an infinity, or a number beyond float32's range.
    if np.isnan(array).sum() > values.null_count or (np.abs(array) > FLOAT32_MAX).any():
        blank = column.is_null().to_numpy(zero_copy_only=False)
        i = np.flatnonzero(~blank & ~(np.abs(array) <= FLOAT32_MAX))[0]
        problem = "is not a finite number; leave a cell blank for a missing value"
        if np.isfinite(array[i]):
            problem = f"is beyond float32's range (±{FLOAT32_MAX:.3g}); rescale the column"
        cell, line = column[int(i)].as_py(), line_of(where, rows[i])
        raise DataError(f"{where}: line {line}, column '{name}': {cell!r} {problem}")
    return array


def first_refused(column: pa.ChunkedArray) -> int:
    """The row of the first cell that does not convert to a number (a binary search over
    slices: each conversion runs in pyarrow, and the search costs two passes at most)."""
    low, high = 0, len(column)  # the first bad cell is in [low, high)
    while high - low > 1:
        middle = (low + high) // 2
        try:
            pc.cast(column.slice(low, middle - low), pa.float64())
            low = middle
        except pa.ArrowInvalid:
            high = middle
    return low


# --- the schema -----------------------------------------------------------------------------


def infer_schema(
    table: pa.Table,
    y_train: np.ndarray,
    rows: np.ndarray,
    train_rows: np.ndarray,
    cfg: Config,
    where,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Each column's kind and encoding, from the training rows: the checkpoint's `meta`;
    and the numeric columns as numbers, which encode need not convert again.

    Plain lists and numbers only in `meta`: it is saved in the checkpoint and, by
    `export`, as JSON.
    """
    d, target = cfg.data, cfg.data.target
    for setting, names in (("data.categorical", d.categorical), ("data.ignore", d.ignore)):
        for name in names:
            if name == target:
                raise DataError(f"{setting} lists '{name}', the target; take it out of the list")
            if name not in table.column_names:
                raise DataError(
                    f"{setting} lists '{name}', which is not a column of {where} "
                    f"(its columns: {', '.join(table.column_names)})"
                )
    meta: dict = {"target": target, "numeric": [], "categorical": {}, "ignored": {}}
    meta["indicators"] = []  # numeric columns with blanks in the training rows: a 0/1 input each
    stats: dict[str, list] = {"median": [], "mean": [], "std": []}
    floats = {}
    for name in table.column_names:
        column = table[name]
        if name == target:
            continue
        if name in d.ignore:
            meta["ignored"][name] = "data.ignore"
        elif not name.strip():
            meta["ignored"][name] = "no name in the header, like the index pandas writes"
        elif name not in d.categorical and looks_numeric(column):
            hint = f", or list '{name}' in data.categorical"
            floats[name] = numbers(column, name, where, rows, hint)
            train = floats[name][train_rows]
            blank = np.isnan(train)
            if blank.all():
                meta["ignored"][name] = "blank on every training row"
            elif not blank.any() and train.min() == train.max():
                meta["ignored"][name] = "the same value on every training row"
            else:
                median = float(np.nanmedian(train))
                filled = np.where(blank, median, train)
                meta["numeric"].append(name)
                stats["median"].append(median)
                stats["mean"].append(float(filled.mean()))
                stats["std"].append(max(float(filled.std(ddof=1)), 1e-6))
                if blank.any():
                    meta["indicators"].append(name)
        else:
            categories, reason = pick_categories(column, train_rows, d.min_category_count)
            if reason:
                meta["ignored"][name] = reason
            else:
                meta["categorical"][name] = categories
    if not meta["numeric"] and not meta["categorical"]:
        ignored = "; ".join(f"{name}: {why}" for name, why in meta["ignored"].items())
        raise DataError(
            f"{where}: no input column is left ({ignored or 'none but the target'}); "
            "shorten data.ignore, or lower data.min_category_count"
        )
    scale = {"y_mean": float(y_train.mean()), "y_std": max(float(y_train.std(ddof=1)), 1e-6)}
    return {**meta, **stats, **scale}, floats


def pick_categories(
    column: pa.ChunkedArray, train_rows: np.ndarray, min_count: int
) -> tuple[list[str], str | None]:
    """The categories on at least min_count training rows, sorted; or why the column is
    ignored instead."""
    if pc.count_distinct(column).as_py() == len(column) - column.null_count:
        return [], "a different value on every row"
    train = column.take(train_rows)
    counts = pc.value_counts(pc.drop_null(train))
    if len(counts) == 0:
        return [], "blank on every training row"
    if len(counts) == 1 and train.null_count == 0:
        return [], "the same value on every training row"
    frequent = pc.greater_equal(counts.field("counts"), min_count)
    kept = sorted(counts.field("values").filter(frequent).to_pylist())
    if not kept:
        return [], f"no value on {min_count} or more training rows: data.min_category_count"
    return kept, None


def describe_schema(meta: dict) -> str:
    """`inputs: 6 numeric, 3 categorical (cut: 5 values, ...); ignored: id (why)`."""
    numeric = f"{len(meta['numeric'])} numeric"
    if meta["indicators"]:
        numeric += f" ({len(meta['indicators'])} with blanks, filled with the median)"
    sizes = [f"{name}: {len(values)}" for name, values in meta["categorical"].items()]
    if sizes:
        sizes[0] += " values"
    text = f"inputs: {numeric}, {len(sizes)} categorical"
    text += f" ({', '.join(sizes)})" if sizes else ""
    if meta["ignored"]:
        ignored = [f"{n.strip() or repr(n)} ({why})" for n, why in meta["ignored"].items()]
        text += "; ignored: " + ", ".join(ignored)
    return text


def encode(
    table: pa.Table, meta: dict, where, rows: np.ndarray | None = None, floats: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's inputs: numbers (n, numeric) with NaN for blanks, and category indices
    (n, categorical). `rows` are the rows' places in the file, for the line of an error;
    `floats`, numeric columns converted already."""
    rows = np.arange(table.num_rows) if rows is None else rows
    numeric = np.empty((table.num_rows, len(meta["numeric"])), dtype=np.float32)
    for j, name in enumerate(meta["numeric"]):
        found = (floats or {}).get(name)
        numeric[:, j] = numbers(table[name], name, where, rows) if found is None else found
    categorical = np.empty((table.num_rows, len(meta["categorical"])), dtype=np.int64)
    for j, (name, categories) in enumerate(meta["categorical"].items()):
        categorical[:, j] = category_indices(table[name], categories)
    return torch.from_numpy(numeric), torch.from_numpy(categorical)


def category_indices(column: pa.ChunkedArray, categories: list[str]) -> np.ndarray:
    """Each cell's category index: MISSING when blank, OTHER when not one of `categories`."""
    found = pc.index_in(column, value_set=pa.array(categories, pa.string()))
    indices = pc.fill_null(found, OTHER - 2).to_numpy(zero_copy_only=False) + 2
    return np.where(column.is_null().to_numpy(zero_copy_only=False), MISSING, indices)


{% include "template/_shared/split.py" %}


# --- the built-in table ---------------------------------------------------------------------


def make_table(n: int, seed: int, target: str = "target") -> pa.Table:
    """n rows of six numeric inputs (x5 blank on a tenth of them), two categorical ones
    (colour; size, blank on a twentieth), and a target that depends on them all, partly
    non-linearly, with some noise. As text, like the cells of a CSV file."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    colour = torch.randint(0, 4, (n,), generator=g)
    size = torch.randint(0, 3, (n,), generator=g)
    y = 2 * x[:, 0] + torch.sin(2 * x[:, 1]) + x[:, 2] * x[:, 3] - 0.5 * x[:, 4].abs()
    y = y + 0.5 * x[:, 5] + torch.tensor([-1.5, -0.5, 0.5, 1.5])[colour]
    y = y + torch.tensor([-0.5, 0.0, 0.5])[size] + 0.1 * torch.randn(n, generator=g)
    blank_x5 = (torch.rand(n, generator=g) < 0.1).tolist()
    blank_size = (torch.rand(n, generator=g) < 0.05).tolist()
    cells = {f"x{i}": [f"{value:.4f}" for value in x[:, i].tolist()] for i in range(6)}
    cells["x5"] = [None if b else v for v, b in zip(cells["x5"], blank_x5, strict=True)]
    cells["colour"] = [("red", "green", "blue", "yellow")[i] for i in colour.tolist()]
    sizes = [("S", "M", "L")[i] for i in size.tolist()]
    cells["size"] = [None if b else v for v, b in zip(sizes, blank_size, strict=True)]
    cells[target] = [f"{value:.4f}" for value in y.tolist()]
    return pa.table({name: pa.array(values, pa.string()) for name, values in cells.items()})


# --- predict and export ---------------------------------------------------------------------


def predict(model: torch.nn.Module, inputs: list[str], meta: dict) -> list[dict]:
    """A row for each row of each CSV file: its input columns as written, then the
    prediction (the target column may be absent)."""
    rows = []
    for path in inputs:
        columns = [*meta["numeric"], *meta["categorical"]]
        table = read_table(Path(path), meta["target"], columns, need_target=False)
        numeric, categorical = encode(table, meta, path)
        with torch.no_grad():
            predictions = model(numeric, categorical).tolist()
        for cells, value in zip(table.to_pylist(), predictions, strict=True):
            rows.append({**cells, f"predicted_{meta['target']}": round(value, 6)})
    return rows


def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    batch = torch.export.Dim("batch", min=1, max=1_000_000)
    numeric = torch.randn(2, len(meta["numeric"]))
    categorical = torch.zeros(2, len(meta["categorical"]), dtype=torch.long)
    return (numeric, categorical), {"numeric": {0: batch}, "categorical": {0: batch}}
