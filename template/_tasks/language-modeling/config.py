@dataclass
class DataConfig:
    """What to train on: the built-in text, or a UTF-8 text file of any size."""

    path: str | None = None  # a UTF-8 text file; None: the built-in text
    val_split: float = 0.1  # the end of the text held out for validation
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    block_size: int = 32  # tokens of context the model sees
    tokenizer: str = "char"  # char: a token per character | bpe: byte-level BPE
    vocab_size: int = 1024  # bpe: tokens the BPE learns from the training text


@dataclass
class ModelConfig:
    """The small causal transformer of model.py."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    dropout: float = 0.2  # keeps a small text from being learned by heart
