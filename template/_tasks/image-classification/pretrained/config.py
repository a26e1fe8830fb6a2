@dataclass
class DataConfig:
    """What to train on: the built-in shapes, or a folder of images per class."""

    path: str | None = None  # folder of class sub-folders; None: built-in shapes
    val_split: float = 0.2  # share held out for validation (unless train/ and val/)
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    image_size: int | None = None  # resized side; None: 32 built-in, yours: the model's
    augment: bool = True  # random crops, rotations and colours of your training images
    hflip: bool = False  # also mirror them left-right (it changes letters and digits)


@dataclass
class ModelConfig:
    """The pretrained Hugging Face model of model.py, fine-tuned with a new head."""

    # A hub id, or a folder written by save_pretrained (see README.md).
    pretrained: str = "microsoft/resnet-18"
    freeze_backbone: bool = False  # train the new head alone, on the backbone's features
    backbone_lr_scale: float = 0.1  # the backbone's learning rate: this times train.lr
