"""Language modelling's data: your text, tokenised by the pretrained model's tokenizer (a
tiny stand-in here, tests/tiny_model.py), and LoRA."""

import pytest
import torch
from tiny_model import tiny_model

from {{ package_name }}.data import build_datasets, predict
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing import UserError
from {{ package_name }}.plumbing.settings import load_config


def config(**overrides):
    return load_config(overrides={"model.pretrained": tiny_model(), **overrides})


def test_a_text_file_is_tokenised_by_the_model_s_tokenizer(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the cat sees the dog. " * 200, encoding="utf-8")
    cfg = config(**{"data.path": str(path), "data.block_size": 16})
    train, val, meta = build_datasets(cfg)
    assert meta["tokenizer"] == "bpe" and len(train[0][0]) == 16
    model = build_model(cfg, meta).eval()
    (line,) = predict(model, ["the cat "], meta)
    assert line.startswith("the cat ")


def test_lora_trains_adapters_alone_and_merges():
    cfg = config(**{"model.lora_rank": 4})
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta)
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name for name in trained)
    tokens = torch.randint(meta["vocab_size"], (2, 8))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # LoRA starts at zero: give the adapters something to merge
    model.eval()
    before = model(tokens)
    merged = model.merged()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(merged(tokens), before, rtol=1e-4, atol=1e-4)


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a folder written by save_pretrained"):
        build_datasets(config(**{"model.pretrained": str(tmp_path / "nowhere")}))
