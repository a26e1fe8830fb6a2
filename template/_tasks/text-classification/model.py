"""The model for text classification: a bag of word embeddings and an MLP, plain PyTorch.

Besides the network, a task defines its loss, its validation metrics and the metric that
decides the best checkpoint; both training engines use these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .config import Config

MONITOR, MONITOR_MODE = "val/acc", "max"  # the best checkpoint has the highest accuracy
BASELINE = "majority class"  # what a model that learned nothing scores; see build_baseline


class BagOfEmbeddings(nn.Module):
    """The mean of the word embeddings of a text (padding left out), then an MLP."""

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        embed_dim: int = 64,
        hidden: int = 64,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.classifier = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).float()
        summed = (self.embedding(tokens) * mask).sum(dim=1)
        return self.classifier(summed / mask.sum(dim=1).clamp(min=1))


def build_model(cfg: Config, meta: dict) -> BagOfEmbeddings:
    return BagOfEmbeddings(
        vocab_size=len(meta["vocab"]),
        num_classes=len(meta["labels"]),
        embed_dim=cfg.model.embed_dim,
        hidden=cfg.model.hidden,
        dropout=cfg.model.dropout,
    )


def compute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def build_metrics(meta: dict) -> MetricCollection:
    """Validation metrics, updated with (model output, target) batches."""
    return MetricCollection(
        {"acc": MulticlassAccuracy(num_classes=len(meta["labels"]), average="micro")}
    )


class ClassPrior(nn.Module):
    """A model that learned nothing: the training classes' frequencies, whatever the input.

    Its accuracy is the majority class's share; its loss is the entropy of the classes.
    """

    def __init__(self, counts: list[int]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(counts, dtype=torch.float).add(1).log())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(inputs), -1)


def build_baseline(meta: dict) -> ClassPrior:
    return ClassPrior(meta["class_counts"])
