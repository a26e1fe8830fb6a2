@dataclass
class DataConfig:
    """What to train on: the built-in sentences, or a CSV file with columns text,label."""

    path: str | None = None  # CSV with columns text,label; None: built-in sentences
    val_split: float = 0.2  # share of the rows held out for validation
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    max_tokens: int = 128  # tokens kept per text (the model's tokenizer's); the rest is cut


@dataclass
class ModelConfig:
    """The pretrained Hugging Face model of model.py, fine-tuned with a new head."""

    # A hub id, or a folder written by save_pretrained (see README.md).
    pretrained: str = "distilbert/distilbert-base-uncased"
    freeze_backbone: bool = False  # train the new head alone, on the backbone's features
    backbone_lr_scale: float = 0.1  # the backbone's learning rate: this times train.lr
