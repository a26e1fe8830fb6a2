"""Text classification's data: your CSV of text,label, tokenised by the pretrained model's
tokenizer (a tiny stand-in here, tests/tiny_model.py), and clear errors."""

import pytest
from tiny_model import tiny_model

from {{ package_name }}.config import Config
from {{ package_name }}.data import DataError, build_datasets, predict
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config
from {{ package_name }}.pretrained import ModelError


def write_csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return path


def config(**overrides):
    return load_config(Config, flags={"model.pretrained": tiny_model(), **overrides})


def test_a_csv_of_text_and_label_loads_and_is_cut_at_max_tokens(tmp_path):
    rows = [("what a great film", "pos"), ("dull and slow and far too long a film", "neg")] * 5
    path = write_csv(tmp_path / "reviews.csv", rows)
    cfg = config(**{"data.path": str(path), "data.max_tokens": 6})
    train, val, meta = build_datasets(cfg)
    assert meta["labels"] == ["neg", "pos"]
    assert meta["max_tokens"] == 6 and "json" in meta["tokenizer"]
    assert (len(train), len(val)) == (8, 2)
    tokens, label = train[0]
    assert tokens.shape == (6,)  # the longest text, cut at max_tokens


def test_predict_names_a_label():
    cfg = config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    (row,) = predict(model, ["the coach saw a goal"], meta)
    assert row["predicted"] in meta["labels"] and 0 < row["probability"] <= 1


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(config(**{"data.path": str(tmp_path / "missing.csv")}))
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("sentence,category\nhello,a\nbye,b\n")
    with pytest.raises(DataError, match="expected a CSV with columns text,label; got columns"):
        build_datasets(config(**{"data.path": str(wrong)}))
    same = write_csv(tmp_path / "same.csv", [("fine", "pos"), ("good", "pos")] * 3)
    with pytest.raises(DataError, match="every row has the label 'pos'"):
        build_datasets(config(**{"data.path": str(same)}))


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not a folder written by save_pretrained"):
        build_datasets(config(**{"model.pretrained": str(tmp_path / "nowhere")}))
