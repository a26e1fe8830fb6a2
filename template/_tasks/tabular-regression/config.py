@dataclass
class DataConfig:
    """What to train on: the built-in table, or a CSV file of numbers and text."""

    path: str | None = None  # a CSV file with a header; None: the built-in table
    val_split: float = 0.2  # share of the rows held out for validation
    target: str = "target"  # the column to predict (numbers); every other column is an input
    categorical: list[str] = field(default_factory=list)  # number columns to take as categories
    ignore: list[str] = field(default_factory=list)  # columns that are not inputs (ids, leaks)
    min_category_count: int = 10  # rarer categories (training rows) share one "other" embedding

    def __post_init__(self):
        check(0 < self.val_split < 1, "data.val_split", self.val_split, "between 0 and 1")
        check(self.target != "", "data.target", self.target, "a column's name")
        count = self.min_category_count
        check(count >= 1, "data.min_category_count", count, "at least 1")


@dataclass
class ModelConfig:
    """The MLP of model.py."""

    hidden: int = 128  # the width of each hidden layer
    layers: int = 2  # hidden layers; 0: a linear model
    dropout: float = 0.0

    def __post_init__(self):
        check(self.hidden >= 1, "model.hidden", self.hidden, "at least 1")
        check(self.layers >= 0, "model.layers", self.layers, "0 or more")
        check(0 <= self.dropout < 1, "model.dropout", self.dropout, "in [0, 1)")
