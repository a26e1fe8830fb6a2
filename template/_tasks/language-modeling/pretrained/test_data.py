"""Language modelling's data: your text, tokenised by the pretrained model's tokenizer (a
tiny stand-in here, tests/tiny_model.py), and LoRA."""

import pytest
import torch
from tiny_model import tiny_model

from {{ package_name }}.config import Config, ModelConfig
from {{ package_name }}.data import build_datasets, predict
from {{ package_name }}.model import build_model
from {{ package_name }}.plumbing.settings import load_config
from {{ package_name }}.pretrained import ModelError


def config(**overrides):
    return load_config(Config, flags={"model.pretrained": tiny_model(), **overrides})


def test_a_text_file_is_tokenised_by_the_model_s_tokenizer(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("the cat sees the dog. " * 200, encoding="utf-8")
    cfg = config(**{"data.path": str(path), "data.block_size": 16})
    train, val, meta = build_datasets(cfg)
    assert meta["tokenizer"] == "bpe" and len(train[0][0]) == 16
    model = build_model(cfg, meta).eval()
    (line,) = predict(model, ["the cat "], meta)
    assert line.startswith("the cat ")


def test_lora_trains_adapters_alone_which_start_at_zero():
    cfg = config(**{"model.lora_rank": 4})
    _, _, meta = build_datasets(cfg)
    model = build_model(cfg, meta).eval()
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in name for name in trained)
    plain = build_model(config(), build_datasets(config())[2]).eval()
    tokens = torch.randint(meta["vocab_size"], (2, 8))
    with torch.no_grad():  # the adapters add nothing yet: the pretrained model's outputs
        torch.testing.assert_close(model(tokens), plain(tokens))
    with pytest.raises(ValueError, match="model.lora_rank must be"):
        ModelConfig(lora_rank=-1)


def test_a_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="not a folder written by save_pretrained"):
        build_datasets(config(**{"model.pretrained": str(tmp_path / "nowhere")}))
