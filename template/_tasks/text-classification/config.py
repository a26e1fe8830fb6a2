@dataclass
class DataConfig:
    """What to train on: the built-in sentences, or a CSV file with columns text,label."""

    path: str | None = None  # CSV with columns text,label; None: built-in sentences
    val_split: float = 0.2  # share of the rows held out for validation
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    max_length: int = 64  # tokens kept per text
    max_vocab: int = 20000  # the most frequent words; the others become <unk>


@dataclass
class ModelConfig:
    """The TF-IDF-weighted bag of embeddings of model.py."""

    embed_dim: int = 64
    hidden: int = 0  # an MLP layer of this width before the classifier; 0: linear
    dropout: float = 0.3
