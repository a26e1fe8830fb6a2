"""Text classification's data: your CSV of text,label, and clear errors."""

import pytest

from {{ package_name }}.config import Config, DataConfig
from {{ package_name }}.data import DataError, build_datasets, predict
from {{ package_name }}.model import build_model


def config(**data):
    """The default settings, with these of the data section (path=...)."""
    return Config(data=DataConfig(**data))


def write_csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return path


def test_a_csv_of_text_and_label_loads(tmp_path):
    rows = [("what a great film", "pos"), ("dull and slow", "neg")] * 5
    cfg = config(path=str(write_csv(tmp_path / "reviews.csv", rows)))
    train, val, meta = build_datasets(cfg)
    assert meta["labels"] == ["neg", "pos"]
    assert "great" in meta["vocab"]
    assert (len(train), len(val)) == (8, 2)
    tokens, label = train[0]
    assert tokens.shape == (cfg.data.max_length,)


def test_predict_names_a_label(tmp_path):
    cfg = config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    (row,) = predict(model, ["the coach saw a goal"], meta)
    assert row["text"] == "the coach saw a goal"
    assert row["predicted"] in meta["labels"] and 0 < row["probability"] <= 1
    # Files: a CSV's rows (its other columns kept), a text file's lines.
    table, lines = tmp_path / "reviews.csv", tmp_path / "reviews.txt"
    table.write_text('id,text\n1,"the chef baked bread, then soup"\n2,rain and storm\n')
    lines.write_text("the coach saw a goal\n\nthe laptop chip\n")
    rows = predict(model, [str(table), str(lines)], meta)
    assert [row["text"] for row in rows] == [
        "the chef baked bread, then soup",
        "rain and storm",
        "the coach saw a goal",
        "the laptop chip",
    ]
    assert [row.get("id") for row in rows] == ["1", "2", None, None]
    (tmp_path / "wrong.csv").write_text("sentence\nhi\n")
    with pytest.raises(DataError, match="expected a CSV with a text column"):
        predict(model, [str(tmp_path / "wrong.csv")], meta)


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(config(path=str(tmp_path / "missing.csv")))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sentence,category\nhello,a\nbye,b\n")
    with pytest.raises(DataError, match="expected a CSV with columns text,label; got columns"):
        build_datasets(config(path=str(wrong)))
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DataError, match="got columns"):
        build_datasets(config(path=str(empty)))
    with pytest.raises(DataError, match="is a folder"):
        build_datasets(config(path=str(tmp_path)))
    same = write_csv(tmp_path / "same.csv", [("fine", "pos"), ("good", "pos")] * 3)
    with pytest.raises(DataError, match="every row has the label 'pos'"):
        build_datasets(config(path=str(same)))
    comma = write_csv(tmp_path / "comma.csv", [("fine", "pos"), ("slow, dull", "neg")] * 3)
    with pytest.raises(DataError, match="line 3 has more fields than the header"):
        build_datasets(config(path=str(comma)))


def test_a_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = write_csv(tmp_path / "excel.csv", [("what a great film", "pos"), ("dull", "neg")] * 5)
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    _, _, meta = build_datasets(config(path=str(path)))
    assert meta["labels"] == ["neg", "pos"]


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="data.val_split must be between 0 and 1, not 1.5"):
        config(val_split=1.5)
    with pytest.raises(ValueError, match="data.max_length must be at least 1, not 0"):
        config(max_length=0)
