"""A tiny stand-in for the pretrained model, so that the tests run offline and in seconds.

It is a DistilBERT (the default model's architecture) of two small layers with random
weights, and a WordPiece tokenizer of the built-in sentences' words, both saved with
save_pretrained: the folder is what `model.pretrained` names, and the project loads it as
it loads a model of the hub.
"""

import atexit
import functools
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch


@functools.cache
def tiny_model() -> str:
    """The tiny model's folder, made once per test session."""
    from {{ package_name }}.data import make_sentences

    folder = Path(tempfile.mkdtemp(prefix="tiny-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    texts, _ = make_sentences(400, seed=1)
    make_tiny_model(folder, texts)
    return str(folder)


def make_tiny_model(folder: Path, texts: list[str]) -> None:
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    tokenizer = wordpiece_tokenizer(texts)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    DistilBertForMaskedLM(config).save_pretrained(folder)  # what distilbert-base-uncased is
    tokenizer.save_pretrained(folder)


def wordpiece_tokenizer(texts: list[str]):
    """A BERT-style lower-casing WordPiece tokenizer: the special tokens, every character
    (starting a word, and continuing one: ##c), then the words of `texts`, the most
    frequent first. Built here rather than by tokenizers' WordPieceTrainer, whose
    vocabulary varies from one process to the next."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizer

    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    words = Counter(
        word
        for text in texts
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text))
    )
    characters = sorted({character for word in words for character in word})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *characters]
    vocab += [f"##{character}" for character in characters]
    vocab += sorted((word for word in words if word not in vocab), key=lambda w: (-words[w], w))
    ids = {token: i for i, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, splitter
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    tokenizer.decoder = decoders.WordPiece()
    return BertTokenizer(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
