@dataclass
class DataConfig:
    """What to train on: the built-in table, or a CSV file of numbers and text."""

    path: str | None = None  # a CSV file with a header; None: the built-in table
    val_split: float = 0.2  # share of the rows held out for validation
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    target: str = "target"  # the column to predict (numbers); every other column is an input
    categorical: list[str] = field(default_factory=list)  # number columns to take as categories
    ignore: list[str] = field(default_factory=list)  # columns that are not inputs (ids, leaks)
    min_category_count: int = 10  # rarer categories (training rows) share one "other" embedding


@dataclass
class ModelConfig:
    """The MLP of model.py."""

    hidden: int = 128
    layers: int = 2
    dropout: float = 0.0
