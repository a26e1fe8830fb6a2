"""Tabular regression's data: your CSV of numbers and text, its schema, and clear errors."""

import logging

import pytest
import torch

from {{ package_name }}.config import Config, DataConfig
from {{ package_name }}.data import (  # one name a line: the package name may be long
    MISSING,
    OTHER,
    DataError,
    build_datasets,
    load_dataset,
    predict,
)
from {{ package_name }}.model import build_model


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def datasets(path, **settings):
    return build_datasets(Config(data=DataConfig(path=str(path), **settings)))


def test_a_csv_of_numbers_loads_with_any_target_name(tmp_path):
    rows = [(i, 2 * i, 3 * i + 1) for i in range(10)]
    path = write_csv(tmp_path / "table.csv", ["a", "b", "price"], rows)
    train, val, meta = datasets(path, target="price")
    assert (meta["numeric"], meta["categorical"]) == (["a", "b"], {})
    assert (len(train), len(val)) == (8, 2)
    (numeric, categorical), target = train[0]
    assert numeric.shape == (2,) and categorical.shape == (0,)


def mixed_table(tmp_path, n=60):
    """pandas' index, an id, a number with blanks, a category with blanks and a rare value,
    a number with few values, a constant, and a target that is blank on two rows."""
    rows = []
    for i in range(n):
        size = "" if i % 7 == 0 else i % 5
        colour = ["red", "green", "blue"][i % 3] if i != 5 else "violet"
        target = "" if i in (3, 4) else i + 10 * (i % 3)
        rows.append((i, f"id{i}", size, colour if i % 11 else "", i % 2, 1, target))
    header = ["", "id", "size", "colour", "flag", "one", "y"]
    return write_csv(tmp_path / "mixed.csv", header, rows)


def test_column_kinds_come_from_the_training_rows_and_are_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    train, val, meta = datasets(mixed_table(tmp_path), target="y")
    assert meta["numeric"] == ["size", "flag"]  # flag: two values, still numeric
    assert meta["indicators"] == ["size"]  # size has blanks: a 0/1 input says which
    assert meta["categorical"] == {"colour": ["blue", "green", "red"]}  # violet: too rare
    assert meta["ignored"] == {
        "": "no name in the header, like the index pandas writes",
        "id": "a different value on every row",
        "one": "the same value on every training row",
    }
    assert len(train) + len(val) == 58  # the rows with a blank target are skipped
    printed = caplog.text
    assert "skipped 2 rows of" in printed
    assert "inputs: 2 numeric (1 with blanks, filled with the median), 1 categorical" in printed
    assert "ignored: '' (no name in the header" in printed
    assert "id (a different value on every row)" in printed


def test_overrides_blanks_and_unseen_categories(tmp_path):
    path = mixed_table(tmp_path)
    _, _, meta = datasets(path, target="y", categorical=["flag"], ignore=["size"])
    assert meta["categorical"]["flag"] == ["0", "1"] and meta["ignored"]["size"] == "data.ignore"
    _, _, meta = datasets(path, target="y", min_category_count=1)
    assert "violet" in meta["categorical"]["colour"]
    # A category never seen in training is "other", a blank cell "missing"; a blank number
    # is NaN, for the model to fill in.
    rows = write_csv(tmp_path / "new.csv", ["colour", "size", "flag", "y"], [("pink", "", 1, 3)])
    rows.write_text(rows.read_text() + ",2,0,4\n")
    dataset = load_dataset(rows, Config(), meta)
    (numeric, categorical), _ = dataset[0]
    assert torch.isnan(numeric[0]) and categorical.tolist() == [OTHER]
    assert dataset[1][0][1].tolist() == [MISSING]


def test_a_checkpoints_schema_encodes_the_validation_split_as_in_training(tmp_path):
    path = mixed_table(tmp_path)
    _, val, meta = datasets(path, target="y")
    # On resume and by evaluate: the checkpoint's target, columns and categories.
    _, again, _ = build_datasets(Config(data=DataConfig(path=str(path))), meta)
    assert torch.equal(val.categorical, again.categorical)
    assert torch.equal(val.targets, again.targets)
    assert torch.allclose(val.numeric, again.numeric, equal_nan=True)


def test_predict_reads_rows_without_the_target(tmp_path):
    cfg = Config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    columns = [*meta["numeric"], *meta["categorical"]]
    cells = [["0.5"] * len(meta["numeric"]) + ["red", "M"], [""] * len(columns)]
    rows = write_csv(tmp_path / "rows.csv", columns, cells)
    first, blank = predict(model, [str(rows)], meta)
    assert list(first) == [*columns, "predicted_target"] and first["colour"] == "red"
    assert blank["colour"] is None and isinstance(blank["predicted_target"], float)


def test_bad_data_is_a_clear_error(tmp_path):
    no_target = write_csv(tmp_path / "no_target.csv", ["a", "b"], [(1, 2), (3, 4)])
    with pytest.raises(DataError, match="expected a CSV with a 'target' column"):
        datasets(no_target)
    rows = [(i, i) for i in range(9)] + [("red", 4)]
    word = write_csv(tmp_path / "word.csv", ["a", "target"], rows)
    with pytest.raises(DataError, match="line 11, column 'a': 'red' is not a number; fix"):
        datasets(word)
    text = write_csv(tmp_path / "text.csv", ["a", "target"], [(1, "cat"), (2, "dog")] * 3)
    with pytest.raises(DataError, match="column 'target' holds text .*predicts numbers"):
        datasets(text)
    with pytest.raises(DataError, match="data.ignore lists 'b', which is not a column"):
        datasets(word, ignore=["b"])
    with pytest.raises(DataError, match="does not exist"):
        datasets(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="is a folder"):
        datasets(tmp_path)


@pytest.mark.parametrize(
    ("cell", "says"),
    [
        ("nan", "'nan' is not a finite number"),
        ("-inf", "'-inf' is not a finite number"),
        ("1e39", "'1e39' is beyond float32's range"),
    ],
)
def test_a_cell_that_is_not_a_finite_float32_is_refused_by_line_and_column(tmp_path, cell, says):
    rows = [(i, 2 * i) for i in range(10)]
    rows[3] = (cell, 6)
    path = write_csv(tmp_path / "table.csv", ["a", "target"], rows)
    with pytest.raises(DataError, match=f"line 5, column 'a': {says}"):
        datasets(path)


def test_too_few_rows_a_constant_target_and_ragged_rows_are_refused(tmp_path):
    few = write_csv(tmp_path / "few.csv", ["a", "target"], [(1, 2), (2, 3), (3, 4), (4, "")])
    with pytest.raises(DataError, match=r"has too few rows \(3\); .* needs at least 4"):
        datasets(few)
    flat = write_csv(tmp_path / "flat.csv", ["a", "target"], [(i, 5) for i in range(10)])
    with pytest.raises(DataError, match="'target' has the same value, 5, on every row"):
        datasets(flat)
    ragged = write_csv(tmp_path / "ragged.csv", ["a", "target"], [(1, 2), (1, 2, 3)] * 3)
    with pytest.raises(DataError, match="line 3 has 3 fields, the header 2"):
        datasets(ragged)


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write_csv(tmp_path / "excel.csv", ["a", "target"], [(i, 2 * i) for i in range(10)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _, _, meta = datasets(path)
    assert meta["numeric"] == ["a"]


def test_spaces_around_numbers_are_stripped_and_thousands_separators_named(tmp_path):
    rows = [(f" {i}.5 ", 2 * i) for i in range(12)]
    train, _, meta = datasets(write_csv(tmp_path / "spaced.csv", ["a", "target"], rows))
    assert meta["numeric"] == ["a"]
    grouped = tmp_path / "grouped.csv"
    grouped.write_text("a,target\n" + "".join(f'"{i},444",{i}\n' for i in range(1, 13)))
    with pytest.raises(DataError, match="line 2, column 'a': '1,444' .* remove them"):
        datasets(grouped)
