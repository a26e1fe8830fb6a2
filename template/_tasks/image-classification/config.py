@dataclass
class DataConfig:
    """What to train on: the built-in shapes, or a folder of images per class."""

    path: str | None = None  # folder of class sub-folders; None: built-in shapes
    val_split: float = 0.2  # share held out for validation (unless train/ and val/)
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    image_size: int | None = None  # resized side; None: 32 built-in, yours: median side, <= 64
    augment: bool = True  # random crops, rotations and colours of your training images
    hflip: bool = False  # also mirror them left-right (it changes letters and digits)


@dataclass
class ModelConfig:
    """The small CNN of model.py."""

    width: int = 16  # channels of the stem, doubled by each conv block after it
    dropout: float = 0.1
    average: float = 0.99  # evaluate a moving average of the weights (steadier); 0: off
