"""Tiny stand-ins for hub models, built from configs and saved with save_pretrained: what the
pretrained projects' tests point model.pretrained at (nothing is downloaded).

    python tiny_models.py PACKAGE TASK OUT    # in the venv of a project of TASK

Run in a generated project's venv, it takes the vocabulary of its tokenizers from the
project's own built-in data (PACKAGE.data), and writes OUT/<name>/ for each stand-in of the
task, with base_model.pt beside: the state_dict of the base model as made in memory, which a
test compares with the loaded backbone (transformers may rename keys in the saved file).
Everything is seeded: the same folders, byte for byte, in every process.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import torch


def wordpiece_tokenizer(texts: list[str]):
    """A BERT-style lower-casing WordPiece tokenizer of these texts' words, built directly:
    tokenizers' WordPieceTrainer gives another vocabulary in each process."""
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
    vocab += sorted((w for w in words if w not in vocab), key=lambda w: (-words[w], w))
    tokenizer = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer, tokenizer.pre_tokenizer = normalizer, splitter
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
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


def save(model, tokenizer_or_processor, folder: Path) -> None:
    model.save_pretrained(folder)
    tokenizer_or_processor.save_pretrained(folder)
    torch.save(model.base_model.state_dict(), folder / "base_model.pt")


def text_models(out: Path, data) -> dict[str, Path]:
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForMaskedLM,
    )

    texts, _ = data.make_sentences(400, seed=1)
    tokenizer = wordpiece_tokenizer(texts)
    small = {"vocab_size": len(tokenizer), "max_position_embeddings": 128}
    small["pad_token_id"] = tokenizer.pad_token_id
    torch.manual_seed(0)
    # What distilbert-base-uncased is: a masked language model, whose head is dropped.
    distilbert = DistilBertForMaskedLM(
        DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **small)
    )
    # A classifier of as many classes as the built-in data's (4): its head must still be
    # replaced, since those were other classes.
    bert = BertForSequenceClassification(
        BertConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=4,
            **small,
        )
    )
    save(distilbert, tokenizer, out / "distilbert")
    save(bert, tokenizer, out / "bert")
    torch.save(bert.classifier.state_dict(), out / "bert" / "head.pt")
    return {"distilbert": out / "distilbert", "bert": out / "bert"}


def image_models(out: Path, data) -> dict[str, Path]:
    from transformers import (
        ConvNextImageProcessorPil,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessorPil,
    )

    torch.manual_seed(0)
    # ResNet-18's architecture and image settings, for 32-pixel images; 10 classes of its own.
    resnet = ResNetForImageClassification(
        ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=10
        )
    )
    # A ViT takes images of one size only (32 here), and warps them to it.
    vit = ViTForImageClassification(
        ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
            num_labels=10,
        )
    )
    save(
        resnet,
        ConvNextImageProcessorPil(size={"shortest_edge": 32}, crop_pct=0.875),
        out / "resnet",
    )
    save(vit, ViTImageProcessorPil(size={"height": 32, "width": 32}), out / "vit")
    return {"resnet": out / "resnet", "vit": out / "vit"}


def bpe_tokenizer(text: str):
    """A byte-level BPE as GPT-2's and SmolLM2's, learned from `text`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=360,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def lm_models(out: Path, data) -> dict[str, Path]:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    tokenizer = bpe_tokenizer(data.make_text(seed=1))
    torch.manual_seed(0)
    # SmolLM2's architecture: grouped-query attention, tied embeddings.
    llama = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
        )
    )
    gpt2 = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    )
    save(llama, tokenizer, out / "llama")
    save(gpt2, tokenizer, out / "gpt2")
    return {"llama": out / "llama", "gpt2": out / "gpt2"}


MAKERS = {
    "image-classification": image_models,
    "text-classification": text_models,
    "language-modeling": lm_models,
}


def main() -> None:
    package, task, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    data = importlib.import_module(f"{package}.data")
    folders = MAKERS[task](out, data)
    print(json.dumps({name: str(folder) for name, folder in folders.items()}))


if __name__ == "__main__":
    main()
