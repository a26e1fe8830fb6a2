@dataclass
class DataConfig:
    """What to train on: the built-in shapes, or a folder of images per class."""

    path: str | None = None  # folder of class sub-folders; None: built-in shapes
    val_split: float = 0.2  # share held out for validation (unless train/ and val/)
    image_size: int | None = None  # resized side; None: 32 built-in, yours: median side, <= 64
    augment: bool = True  # random crops, rotations and colours of your training images
    hflip: bool = False  # also mirror them left-right (it changes letters and digits)

    def __post_init__(self):
        check(0 < self.val_split < 1, "data.val_split", self.val_split, "between 0 and 1")
        size = self.image_size
        check(size is None or size >= 8, "data.image_size", size, "at least 8 (or null: chosen)")


@dataclass
class ModelConfig:
    """The small CNN of model.py."""

    width: int = 16  # channels of the stem, doubled by each conv block after it
    dropout: float = 0.1
    average: float = 0.99  # evaluate a moving average of the weights (steadier); 0: off

    def __post_init__(self):
        check(self.width >= 1, "model.width", self.width, "at least 1")
        check(0 <= self.dropout < 1, "model.dropout", self.dropout, "in [0, 1)")
        check(0 <= self.average < 1, "model.average", self.average, "in [0, 1)")
