"""Tabular regression's data: your CSV of numbers with a target column, and clear errors."""

import pytest

from {{ package_name }}.data import DataError, build_datasets, predict
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config


def write_csv(path, header, rows):
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def test_a_csv_of_numbers_loads_with_any_target_name(tmp_path):
    rows = [(i, 2 * i, 3 * i + 1) for i in range(10)]
    path = write_csv(tmp_path / "table.csv", ["a", "b", "price"], rows)
    cfg = load_config(overrides={"data.path": str(path), "data.target": "price"})
    train, val, meta = build_datasets(cfg)
    assert meta["columns"] == ["a", "b"]
    assert (len(train), len(val)) == (8, 2)
    features, target = train[0]
    assert features.shape == (2,)


def test_predict_reads_rows_without_the_target(tmp_path):
    cfg = load_config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    rows = write_csv(tmp_path / "rows.csv", meta["columns"], [[0.5] * len(meta["columns"])] * 2)
    lines = predict(model, [str(rows)], meta)
    assert len(lines) == 2
    float(lines[0].rsplit("= ", 1)[1])


def test_bad_data_is_a_clear_error(tmp_path):
    no_target = write_csv(tmp_path / "no_target.csv", ["a", "b"], [(1, 2), (3, 4)])
    with pytest.raises(DataError, match="expected a CSV with a 'target' column"):
        build_datasets(load_config(overrides={"data.path": str(no_target)}))
    text = write_csv(tmp_path / "text.csv", ["a", "target"], [(1, 2), ("red", 4)])
    with pytest.raises(DataError, match="line 3, column 'a': 'red' is not a number"):
        build_datasets(load_config(overrides={"data.path": str(text)}))
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path / "missing.csv")}))
    with pytest.raises(DataError, match="is a folder"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path)}))


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
        build_datasets(load_config(overrides={"data.path": str(path)}))


def test_too_few_rows_a_constant_target_and_ragged_rows_are_refused(tmp_path):
    few = write_csv(tmp_path / "few.csv", ["a", "target"], [(1, 2), (2, 3), (3, 4)])
    with pytest.raises(DataError, match=r"has too few rows \(3\); .* needs at least 4"):
        build_datasets(load_config(overrides={"data.path": str(few)}))
    flat = write_csv(tmp_path / "flat.csv", ["a", "target"], [(i, 5) for i in range(10)])
    with pytest.raises(DataError, match="'target' has the same value, 5, on every row"):
        build_datasets(load_config(overrides={"data.path": str(flat)}))
    ragged = write_csv(tmp_path / "ragged.csv", ["a", "target"], [(1, 2), (1, 2, 3)] * 3)
    with pytest.raises(DataError, match="line 3 has 3 fields, the header 2"):
        build_datasets(load_config(overrides={"data.path": str(ragged)}))


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write_csv(tmp_path / "excel.csv", ["a", "target"], [(i, 2 * i) for i in range(10)])
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _, _, meta = build_datasets(load_config(overrides={"data.path": str(path)}))
    assert meta["columns"] == ["a"]
