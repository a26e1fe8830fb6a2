@dataclass
class DataConfig:
    """What to train on: the built-in shapes, or a folder of images per class."""

    path: str | None = None  # folder of class sub-folders; None: built-in shapes
    val_split: float = 0.2  # share held out for validation (unless train/ and val/)
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    image_size: int = 32  # images are resized to image_size x image_size pixels


@dataclass
class ModelConfig:
    """The small CNN of model.py."""

    width: int = 32  # channels of the first block, doubled by each next one
    dropout: float = 0.1
