@dataclass
class DataConfig:
    """What to train on: the built-in table, or a CSV file of numeric columns."""

    path: str | None = None  # CSV of numeric columns; None: the built-in table
    val_split: float = 0.2  # share of the rows held out for validation
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    target: str = "target"  # the column to predict; every other column is an input


@dataclass
class ModelConfig:
    """The MLP of model.py."""

    hidden: int = 128
    layers: int = 2
    dropout: float = 0.0
