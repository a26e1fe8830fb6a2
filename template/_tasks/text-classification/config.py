@dataclass
class DataConfig:
    """What to train on: the built-in sentences, or a CSV file with columns text,label."""

    path: str | None = None  # CSV with columns text,label; None: built-in sentences
    val_split: float = 0.2  # share of the rows held out for validation
    max_length: int = 64  # tokens kept per text
    max_vocab: int = 20000  # the most frequent words; the others become <unk>

    def __post_init__(self):
        check(0 < self.val_split < 1, "data.val_split", self.val_split, "between 0 and 1")
        check(self.max_length >= 1, "data.max_length", self.max_length, "at least 1")
        check(self.max_vocab >= 3, "data.max_vocab", self.max_vocab, "at least 3")


@dataclass
class ModelConfig:
    """The TF-IDF-weighted bag of embeddings of model.py."""

    embed_dim: int = 64
    hidden: int = 0  # an MLP layer of this width before the classifier; 0: linear
    dropout: float = 0.3

    def __post_init__(self):
        check(self.embed_dim >= 1, "model.embed_dim", self.embed_dim, "at least 1")
        check(self.hidden >= 0, "model.hidden", self.hidden, "0 (linear) or more")
        check(0 <= self.dropout < 1, "model.dropout", self.dropout, "in [0, 1)")
