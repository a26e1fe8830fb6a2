@dataclass
class DataConfig:
    """What to train on: the built-in text, or a UTF-8 text file of any size."""

    path: str | None = None  # a UTF-8 text file; None: the built-in text
    val_split: float = 0.1  # the end of the text held out for validation
    block_size: int = 128  # tokens of context the model sees (the model's tokenizer's)

    def __post_init__(self):
        check(0 < self.val_split < 1, "data.val_split", self.val_split, "between 0 and 1")
        check(self.block_size >= 1, "data.block_size", self.block_size, "at least 1")


@dataclass
class ModelConfig:
    """The pretrained Hugging Face causal language model of model.py, fine-tuned."""

    # A hub id, or a folder written by save_pretrained (see README.md).
    pretrained: str = "HuggingFaceTB/SmolLM2-135M"
    lora_rank: int = 0  # LoRA: train adapters of this rank, the model frozen; 0: all weights

    def __post_init__(self):
        check(bool(self.pretrained), "model.pretrained", self.pretrained, "a hub id or a folder")
        rank = self.lora_rank
        check(0 <= rank <= 4096, "model.lora_rank", rank, "0 (off) or a rank in 1..4096")
