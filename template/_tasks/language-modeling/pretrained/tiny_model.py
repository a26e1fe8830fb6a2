"""A tiny stand-in for the pretrained model, so that the tests run offline and in seconds.

It is a Llama (the default model's architecture) of two small layers with random weights,
and a byte-level BPE tokenizer learned from the built-in text, both saved with
save_pretrained: the folder is what `model.pretrained` names, and the project loads it as
it loads a model of the hub.
"""

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import torch


@functools.cache
def tiny_model() -> str:
    """The tiny model's folder, made once per test session."""
    from {{ package_name }}.data import make_text

    folder = Path(tempfile.mkdtemp(prefix="tiny-model-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    make_tiny_model(folder, make_text(seed=1))
    return str(folder)


def make_tiny_model(folder: Path, text: str) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
