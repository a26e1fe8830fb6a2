{# The scratch project's data.py, with the tokenizer of the pretrained model instead of a
   vocabulary of words: only these blocks differ. #}
{% extends "template/_tasks/text-classification/data.py" %}
{% block docstring %}
"""Data for text classification: built-in sentences, or your CSV file with columns text,label.

Your data: a CSV file with a header and (at least) the columns `text` and `label`; labels
may be any strings. Texts are tokenised by the pretrained model's own tokenizer, cut at
data.max_tokens tokens; the tokenizer is saved with the checkpoint.
"""
{% endblock %}
{% block imports %}
import csv
import logging
import math
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from . import pretrained
from .config import Config

{% endblock %}
{% block build_datasets_docstring %}
    """Training and validation sets, and the metadata the model needs (tokenizer, labels).

    The tokenizer is model.pretrained's; a checkpoint's `meta` is reused.
    """
{% endblock %}
{% block meta %}
        tokenizer = pretrained.tokenizer_settings(cfg.model.pretrained)
        meta = {
            "tokenizer": tokenizer,
            "labels": names,
            # No longer than the model reads (its position embeddings).
            "max_tokens": min(cfg.data.max_tokens, tokenizer["max_length"]),
            "class_counts": [counts[name] for name in names],  # in the training split
        }
{% endblock %}
{% block encoding %}
def encode(texts: list[str], meta: dict) -> torch.Tensor:
    """Token ids, (len(texts), the longest text's tokens), each text cut at max_tokens and
    padded with the tokenizer's padding token (the model masks it out)."""
    settings = meta["tokenizer"]
    tokenizer = pretrained.tokenizer(settings["json"])
    tokenizer.enable_truncation(meta["max_tokens"])
    tokenizer.enable_padding(pad_id=settings["pad_id"], pad_token=settings["pad_token"])
    ids = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    return torch.tensor(ids, dtype=torch.long).view(len(texts), -1)
{% endblock %}
{% block example_inputs %}
def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=meta["max_tokens"])
    tokens = torch.randint(meta["tokenizer"]["vocab_size"], (2, meta["max_tokens"]))
    return (tokens,), {"tokens": {0: batch, 1: length}}
{% endblock %}
