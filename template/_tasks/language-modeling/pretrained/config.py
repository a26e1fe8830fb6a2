@dataclass
class DataConfig:
    """What to train on: the built-in text, or a UTF-8 text file of any size."""

    path: str | None = None  # a UTF-8 text file; None: the built-in text
    val_split: float = 0.1  # the end of the text held out for validation
    folds: int | None = None  # k-fold cross-validation (train --folds K): val_split unused
    fold: int | None = None  # which of the folds is held out for validation, 1 to folds
    block_size: int = 128  # tokens of context the model sees (the model's tokenizer's)


@dataclass
class ModelConfig:
    """The pretrained Hugging Face causal language model of model.py, fine-tuned."""

    # A hub id, or a folder written by save_pretrained (see README.md).
    pretrained: str = "HuggingFaceTB/SmolLM2-135M"
    lora_rank: int = 0  # LoRA: train adapters of this rank, the model frozen; 0: all weights
