@dataclass
class DataConfig:
    """What to train on: the built-in shapes, or a folder of images per class."""

    path: str | None = None  # folder of class sub-folders; None: built-in shapes
    val_split: float = 0.2  # share held out for validation (unless train/ and val/)
    image_size: int | None = None  # resized side; None: 32 built-in, yours: the model's
    augment: bool = True  # random crops, rotations and colours of your training images
    hflip: bool = False  # also mirror them left-right (it changes letters and digits)

    def __post_init__(self):
        check(0 < self.val_split < 1, "data.val_split", self.val_split, "between 0 and 1")
        size = self.image_size
        check(size is None or size >= 8, "data.image_size", size, "at least 8 (or null: chosen)")


@dataclass
class ModelConfig:
    """The pretrained Hugging Face model of model.py, fine-tuned with a new head."""

    # A hub id, or a folder written by save_pretrained (see README.md).
    pretrained: str = "microsoft/resnet-18"
    freeze_backbone: bool = False  # train the new head alone, on the backbone's features

    def __post_init__(self):
        check(bool(self.pretrained), "model.pretrained", self.pretrained, "a hub id or a folder")
