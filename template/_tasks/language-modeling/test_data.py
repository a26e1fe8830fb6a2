"""Language modelling's data: your UTF-8 text file, its tokenizers and token cache, and
clear errors."""

import time

import pytest
import torch

from {{ package_name }} import data
from {{ package_name }}.data import (  # one name a line: the package name may be long
    DataError,
    build_datasets,
    load_dataset,
    predict,
)
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing import UserError
from {{ package_name }}.plumbing.settings import load_config
from {{ package_name }}.plumbing.training import make_loader

POEM = "the quick brown fox jumps over the lazy dog\n"


def test_a_text_file_loads_as_character_windows(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM * 20, encoding="utf-8")
    cfg = load_config(overrides={"data.path": str(path), "data.block_size": 16})
    train, val, meta = build_datasets(cfg)
    assert set(meta["chars"]) == set(POEM)
    assert sum(meta["token_counts"]) == round(len(POEM) * 20 * 0.9)  # the training text
    inputs, targets = train[0]
    assert inputs.shape == targets.shape == (16,)
    assert (inputs[1:] == targets[:-1]).all()
    # A training window starts at every token; validation windows follow each other.
    assert len(train) == round(len(POEM) * 20 * 0.9) - 16
    assert len(val) == (len(POEM) * 20 // 10 - 1) // 16


def test_a_bpe_learns_from_the_training_text_and_round_trips(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM * 50 + "ünïcödé ✓\n" * 5, encoding="utf-8")
    overrides = {"data.path": str(path), "data.tokenizer": "bpe", "data.vocab_size": 300}
    cfg = load_config(overrides=overrides)
    train, _, meta = build_datasets(cfg)
    assert meta["tokenizer"] == "bpe" and 256 < meta["vocab_size"] <= 300  # as many as it finds
    assert len(train[0][0]) == cfg.data.block_size
    # Whole words became tokens: fewer tokens than characters.
    assert sum(meta["token_counts"]) < len(POEM) * 45
    model = build_model(cfg, meta).eval()
    (text,) = predict(model, ["the quick ✓ "], meta)
    assert text.startswith("the quick ✓ ")


def test_predict_continues_a_prompt():
    cfg = load_config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    (text,) = predict(model, ["the cat "], meta)
    assert text.startswith("the cat ")
    assert len(text) > len("the cat ")


def test_predict_samples_several_prompts_as_asked():
    cfg = load_config()
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    first, dashes, second = predict(model, ["the cat ", "a dog "], meta, max_new_tokens=5)
    assert dashes == "-" * 15 and second.startswith("a dog ")
    assert len(first) == len("the cat ") + 5  # a character a token
    # top_k=1 takes the likeliest token each time, whatever the seed or the temperature.
    greedy = predict(model, ["the cat "], meta, max_new_tokens=8, temperature=2.0, top_k=1)
    assert greedy == predict(model, ["the cat "], meta, max_new_tokens=8, top_k=1)
    with pytest.raises(UserError, match="--temperature above 0"):
        predict(model, ["the cat "], meta, temperature=0)


def test_a_large_text_is_encoded_once_into_the_token_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE_MIN_BYTES", 0)
    path = tmp_path / "big.txt"
    path.write_text(POEM * 200, encoding="utf-8")
    cfg = load_config(overrides={"data.path": str(path), "train.output_dir": str(tmp_path)})
    train, val, meta = build_datasets(cfg)
    cache = tmp_path / ".token-cache"
    files = sorted(p.name for p in cache.iterdir())
    assert [name.rsplit(".", 1)[1] for name in files] == ["json", "tokens"]
    tokens = cache / files[1]
    assert tokens.stat().st_size == len(POEM) * 200  # one byte a token
    written = tokens.stat().st_mtime_ns
    again, _, meta_again = build_datasets(cfg)
    assert tokens.stat().st_mtime_ns == written and meta_again == meta
    assert (again[5][0] == train[5][0]).all()
    # A resumed run (the checkpoint's tokenizer) and evaluate --data read the same tokens.
    resumed, _, _ = build_datasets(cfg, meta)
    assert (resumed[7][1] == train[7][1]).all() and len(list(cache.iterdir())) == 2
    # A changed file is encoded again.
    path.write_text(POEM * 201, encoding="utf-8")
    build_datasets(cfg)
    assert len(list(cache.glob("*.tokens"))) == 2


def test_a_fold_holds_out_a_stretch_that_no_training_window_crosses(tmp_path):
    path = tmp_path / "count.txt"
    path.write_text("".join(chr(ord("a") + i % 26) for i in range(3000)), encoding="utf-8")
    overrides = {"data.path": str(path), "data.folds": 3, "data.fold": 2, "data.block_size": 8}
    train, val, _ = build_datasets(load_config(overrides=overrides))
    held = set(range(1000, 2000))
    assert val.starts == [1000] and val.ends[-1] == (1000 - 1) // 8
    for index in range(len(train)):
        start = train.starts[0] + index if index < train.ends[0] else 2000 + index - train.ends[0]
        assert not held & set(range(start, start + 9)), index
    assert len(train) == 2 * (1000 - 8)


def test_evaluation_uses_eval_batches_of_windows_spread_over_the_held_out_text(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text(POEM * 400, encoding="utf-8")
    overrides = {"data.path": str(path), "train.eval_batches": 3, "train.batch_size": 4}
    cfg = load_config(overrides=overrides)
    _, val, _ = build_datasets(cfg)
    loader = make_loader(val, cfg, 0, 1, torch.device("cpu"), train=False)
    assert len(loader) == 3 and len(loader.dataset) == 12 < len(val)
    starts = [int(index) for index in loader.dataset.indices]
    assert starts[0] == 0 and starts[-1] > len(val) * 0.9  # from the start to the end


def test_a_billion_windows_are_drawn_without_listing_them():
    """The sampler draws a huge dataset's indices a chunk at a time (with replacement)."""

    class Huge(torch.utils.data.Dataset):
        def __len__(self):
            return 10**9

        def __getitem__(self, index):
            return torch.tensor(index)

    cfg = load_config()
    loader = make_loader(Huge(), cfg, 0, 1, torch.device("cpu"), train=True)
    started = time.perf_counter()
    batch = next(iter(loader))
    assert time.perf_counter() - started < 5 and len(set(batch.tolist())) == len(batch)
    loader.load_state_dict({"epoch": 0, "served": 3})  # a resume starts where it left off
    resumed = next(iter(loader))
    loader.load_state_dict({"epoch": 0, "served": 0})
    fresh = iter(loader)
    for _ in range(3):
        next(fresh)
    assert (next(fresh) == resumed).all()


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
    text = tmp_path / "text.txt"
    text.write_text(POEM * 20, encoding="utf-8")
    _, _, meta = build_datasets(load_config(overrides={"data.path": str(text)}))
    other = tmp_path / "other.txt"
    other.write_text("ZZZ " * 100, encoding="utf-8")
    with pytest.raises(DataError, match="other.txt has characters \\['Z'\\]"):
        load_dataset(other, load_config(), meta)


def test_a_byte_order_mark_is_not_a_character_of_the_text(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\ufeff" + "abc abd abe\n" * 40, encoding="utf-8")
    _, _, meta = build_datasets(load_config(overrides={"data.path": str(path)}))
    assert "\ufeff" not in meta["chars"]
