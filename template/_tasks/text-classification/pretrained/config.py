@dataclass
class DataConfig:
    """What to train on: the built-in sentences, or a CSV file with columns text,label."""

    path: str | None = None  # CSV with columns text,label; None: built-in sentences
    val_split: float = 0.2  # share of the rows held out for validation
    max_tokens: int = 128  # tokens kept per text (the model's tokenizer's); the rest is cut

    def __post_init__(self):
        check(0 < self.val_split < 1, "data.val_split", self.val_split, "between 0 and 1")
        check(self.max_tokens >= 1, "data.max_tokens", self.max_tokens, "at least 1")


@dataclass
class ModelConfig:
    """The pretrained Hugging Face model of model.py, fine-tuned with a new head."""

    # A hub id, or a folder written by save_pretrained (see README.md).
    pretrained: str = "distilbert/distilbert-base-uncased"
    freeze_backbone: bool = False  # train the new head alone, on the backbone's features

    def __post_init__(self):
        check(bool(self.pretrained), "model.pretrained", self.pretrained, "a hub id or a folder")
