"""Language modelling's data: your UTF-8 text file, and clear errors."""

import pytest

from {{ package_name }}.data import DataError, build_datasets, predict
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config


def test_a_text_file_loads_as_character_windows(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("the quick brown fox jumps over the lazy dog\n" * 20, encoding="utf-8")
    cfg = load_config(overrides={"data.path": str(path), "data.block_size": 16})
    train, val, meta = build_datasets(cfg)
    assert set(meta["chars"]) == set("the quick brown fox jumps over the lazy dog\n")
    inputs, targets = train[0]
    assert inputs.shape == targets.shape == (16,)
    assert (inputs[1:] == targets[:-1]).all()


def test_predict_continues_a_prompt():
    cfg = load_config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    (text,) = predict(model, ["the cat "], meta)
    assert text.startswith("the cat ")
    assert len(text) > len("the cat ")


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path / "missing.txt")}))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="is empty"):
        build_datasets(load_config(overrides={"data.path": str(empty)}))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(DataError, match="not UTF-8"):
        build_datasets(load_config(overrides={"data.path": str(binary)}))
    with pytest.raises(DataError, match="is a folder"):
        build_datasets(load_config(overrides={"data.path": str(tmp_path)}))


def test_a_byte_order_mark_is_not_a_character_of_the_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\ufeff" + "abc abd abe\n" * 40, encoding="utf-8")
    _, _, meta = build_datasets(load_config(overrides={"data.path": str(path)}))
    assert "\ufeff" not in meta["chars"]
