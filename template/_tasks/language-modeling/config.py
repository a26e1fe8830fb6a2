@dataclass
class DataConfig:
    """What to train on: the built-in text, or a UTF-8 text file of any size."""

    path: str | None = None  # a UTF-8 text file; None: the built-in text
    val_split: float = 0.1  # the end of the text held out for validation
    block_size: int = 32  # tokens of context the model sees
    tokenizer: str = "char"  # char: a token per character | bpe: byte-level BPE
    vocab_size: int = 1024  # bpe: tokens the BPE learns from the training text

    def __post_init__(self):
        check(0 < self.val_split < 1, "data.val_split", self.val_split, "between 0 and 1")
        check(self.block_size >= 1, "data.block_size", self.block_size, "at least 1")
        check(self.tokenizer in ("char", "bpe"), "data.tokenizer", self.tokenizer, "char or bpe")
        vocab = self.vocab_size
        check(256 < vocab <= 2**16, "data.vocab_size", vocab, "in 257..65536 (bytes and more)")


@dataclass
class ModelConfig:
    """The small causal transformer of model.py."""

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64  # a multiple of n_head
    dropout: float = 0.2  # keeps a small text from being learned by heart

    def __post_init__(self):
        check(self.n_layer >= 1, "model.n_layer", self.n_layer, "at least 1")
        check(self.n_head >= 1, "model.n_head", self.n_head, "at least 1")
        n_embd, n_head = self.n_embd, self.n_head
        ok = n_embd >= 1 and n_embd % n_head == 0
        check(ok, "model.n_embd", n_embd, f"a positive multiple of model.n_head ({n_head})")
        check(0 <= self.dropout < 1, "model.dropout", self.dropout, "in [0, 1)")
