"""Language modelling's data: your UTF-8 text file, its tokenizers and token cache, and
clear errors."""

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from {{ package_name }} import data
from {{ package_name }}.config import Config, DataConfig, ModelConfig
from {{ package_name }}.data import (  # one name a line: the package name may be long
    DataError,
    build_datasets,
    load_dataset,
    predict,
)
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config
from {{ package_name }}.plumbing.training import spread

POEM = "the quick brown fox jumps over the lazy dog\n"


def config(**settings):
    """The settings, with some changed: config(**{"data.path": file})."""
    return load_config(Config, flags=settings)


def test_a_text_file_loads_as_character_windows(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM * 20, encoding="utf-8")
    train, val, meta = build_datasets(config(**{"data.path": str(path), "data.block_size": 16}))
    assert set(meta["chars"]) == set(POEM)
    assert sum(meta["token_counts"]) == round(len(POEM) * 20 * 0.9)  # the training text
    inputs, targets = train[0]
    assert inputs.shape == targets.shape == (16,)
    assert (inputs[1:] == targets[:-1]).all()
    # A training window starts at every token; validation windows follow each other.
    assert len(train) == round(len(POEM) * 20 * 0.9) - 16
    assert len(val) == (len(POEM) * 20 // 10 - 1) // 16
    assert val.start == round(len(POEM) * 20 * 0.9)  # the end of the text, after training's


def test_a_bpe_learns_from_the_training_text_and_round_trips(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM * 50 + "ünïcödé ✓\n" * 5, encoding="utf-8")
    cfg = config(**{"data.path": str(path), "data.tokenizer": "bpe", "data.vocab_size": 300})
    train, _, meta = build_datasets(cfg)
    assert meta["tokenizer"] == "bpe" and 256 < meta["vocab_size"] <= 300  # as many as it finds
    assert len(train[0][0]) == cfg.data.block_size
    # Whole words became tokens: fewer tokens than characters.
    assert sum(meta["token_counts"]) < len(POEM) * 45
    model = build_model(cfg, meta).eval()
    (text,) = predict(model, ["the quick ✓ "], meta)
    assert text.startswith("the quick ✓ ")


def test_predict_samples_several_prompts_as_asked():
    cfg = config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    (text,) = predict(model, ["the cat "], meta)
    assert text.startswith("the cat ") and len(text) == len("the cat ") + 200
    first, dashes, second = predict(model, ["the cat ", "a dog "], meta, max_new_tokens=5)
    assert dashes == "-" * 15 and second.startswith("a dog ")
    assert len(first) == len("the cat ") + 5  # a character a token
    # top_k=1 takes the likeliest token each time, whatever the seed or the temperature.
    greedy = predict(model, ["the cat "], meta, max_new_tokens=8, temperature=2.0, top_k=1)
    assert greedy == predict(model, ["the cat "], meta, max_new_tokens=8, top_k=1)
    for temperature in (0, float("nan")):
        with pytest.raises(DataError, match="--temperature above 0"):
            predict(model, ["the cat "], meta, temperature=temperature)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError, match="model.n_embd must be a positive multiple of"):
        ModelConfig(n_head=3)
    with pytest.raises(ValueError, match="data.tokenizer must be char or bpe"):
        DataConfig(tokenizer="words")
    with pytest.raises(ValueError, match="data.vocab_size must be in 257..65536"):
        DataConfig(vocab_size=256)


def cached(tmp_path, monkeypatch, text=POEM * 200, name="big.txt"):
    """A text file that goes through the token cache, and the settings that read it."""
    monkeypatch.setattr(data, "CACHE_MIN_BYTES", 0)
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path, config(**{"data.path": str(path), "train.output_dir": str(tmp_path)})


def test_a_large_text_is_encoded_once_into_the_token_cache(tmp_path, monkeypatch):
    path, cfg = cached(tmp_path, monkeypatch)
    train, val, meta = build_datasets(cfg)
    (tokens,) = (tmp_path / ".token-cache").glob("*.tokens")
    # The header, one byte a token, and the trailer (the tokenizer, the lengths, the counts).
    trailer = tokens.stat().st_size - data.HEADER.size - len(POEM) * 200
    assert 0 < trailer < 10_000
    written = tokens.stat().st_mtime_ns
    again, _, meta_again = build_datasets(cfg)
    assert tokens.stat().st_mtime_ns == written and meta_again == meta
    assert (again[5][0] == train[5][0]).all()
    # A resumed run (the checkpoint's tokenizer) reads the same tokens from the same file.
    resumed, _, _ = build_datasets(cfg, meta)
    assert (resumed[7][1] == train[7][1]).all()
    assert len(list((tmp_path / ".token-cache").glob("*.tokens"))) == 1
    # evaluate --data: the whole file, in windows that follow each other.
    assert len(load_dataset(path, cfg, meta)) == (len(POEM) * 200 - 1) // 32


def test_a_text_edited_in_place_is_encoded_again(tmp_path, monkeypatch):
    """The cache is keyed by the text's bytes, not by its name, size and time."""
    path, cfg = cached(tmp_path, monkeypatch)
    _, _, meta = build_datasets(cfg)
    stat = path.stat()
    path.write_text(POEM.replace("dog", "cat") * 200, encoding="utf-8")  # the same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and time
    _, _, edited = build_datasets(cfg)
    assert "g" in meta["chars"] and "g" not in edited["chars"]
    assert len(list((tmp_path / ".token-cache").glob("*.tokens"))) == 2


@pytest.mark.parametrize("damage", ["zeros", "truncated", "trailer"])
def test_a_damaged_token_file_is_encoded_again_with_a_note(tmp_path, monkeypatch, caplog, damage):
    path, cfg = cached(tmp_path, monkeypatch)
    train, _, meta = build_datasets(cfg)
    (tokens,) = (tmp_path / ".token-cache").glob("*.tokens")
    whole = tokens.read_bytes()
    damaged = {
        "zeros": bytes(len(whole)),  # a file of zeros of the right size
        "truncated": whole[: len(whole) // 2],
        "trailer": whole[:-5] + b"zzzzz",
    }[damage]
    tokens.write_bytes(damaged)
    with caplog.at_level(logging.INFO, logger=data.__name__):
        again, _, meta_again = build_datasets(cfg)
    assert "is damaged or stale" in caplog.text and "encoding the text again" in caplog.text
    assert tokens.read_bytes() == whole and meta_again == meta
    assert all((again[i][0] == train[i][0]).all() for i in (0, 100, len(train) - 1))


def test_a_killed_encoding_leaves_nothing_behind(tmp_path, monkeypatch):
    """A temporary file of a dead process (no one holds its lock) is removed."""
    path, cfg = cached(tmp_path, monkeypatch)
    folder = tmp_path / ".token-cache"
    folder.mkdir()
    (folder / "other.txt.0123456789abcdef.tmp").write_bytes(b"half a token file")
    build_datasets(cfg)
    assert not list(folder.glob("*.tmp")) and len(list(folder.glob("*.tokens"))) == 1


def test_processes_that_start_together_encode_the_text_once(tmp_path, monkeypatch):
    """Each takes the lock beside the token file (here threads, each with a lock of its
    own, as processes have): the first encodes, the others wait for it and read the file."""
    path, cfg = cached(tmp_path, monkeypatch, text=POEM * 20_000)
    encoded, write_cache = [], data.write_cache
    monkeypatch.setattr(data, "write_cache", lambda *args: [encoded.append(1), write_cache(*args)])
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: build_datasets(cfg), range(3)))
    assert len(encoded) == 1
    assert all((train[50][0] == results[0][0][50][0]).all() for train, _, _ in results)


def test_evaluation_windows_can_be_spread_over_the_held_out_text(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM * 400, encoding="utf-8")
    _, val, _ = build_datasets(config(**{"data.path": str(path)}))
    spread_out = spread(val, 12)
    assert len(spread_out) == 12 < len(val)
    assert spread_out.indices[0] == 0 and spread_out.indices[-1] > len(val) * 0.9


def test_bad_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        build_datasets(config(**{"data.path": str(tmp_path / "missing.txt")}))
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(DataError, match="is empty"):
        build_datasets(config(**{"data.path": str(empty)}))
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81" * 100)
    with pytest.raises(DataError, match="not UTF-8"):
        build_datasets(config(**{"data.path": str(binary)}))
    with pytest.raises(DataError, match="is a folder"):
        build_datasets(config(**{"data.path": str(tmp_path)}))
    short = tmp_path / "short.txt"
    short.write_text("a few words\n", encoding="utf-8")
    with pytest.raises(DataError, match="too few for block_size 32"):
        build_datasets(config(**{"data.path": str(short)}))
    text = tmp_path / "text.txt"
    text.write_text(POEM * 20, encoding="utf-8")
    _, _, meta = build_datasets(config(**{"data.path": str(text)}))
    other = tmp_path / "other.txt"
    other.write_text("ZZZ " * 100, encoding="utf-8")
    with pytest.raises(DataError, match="other.txt has characters \\['Z'\\]"):
        load_dataset(other, config(), meta)


def test_a_byte_order_mark_is_not_a_character_of_the_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\ufeff" + "abc abd abe\n" * 40, encoding="utf-8")
    _, _, meta = build_datasets(config(**{"data.path": str(path)}))
    assert "\ufeff" not in meta["chars"]
