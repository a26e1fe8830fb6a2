@dataclass
class DataConfig:
    """What to train on: the built-in shapes, or a folder of images per class."""

    path: str | None = None  # folder of class sub-folders; None: built-in shapes
    val_split: float = 0.2  # share held out for validation (unless train/ and val/)
    image_size: int = 32  # images are resized to image_size x image_size pixels


@dataclass
class ModelConfig:
    """The small CNN of model.py."""

    width: int = 32  # channels of the first block, doubled by each next one
    dropout: float = 0.1
