{% block docstring %}
"""The model for text classification: a TF-IDF-weighted bag of word embeddings, plain PyTorch.

Besides the network, a task defines its loss, its validation metrics and the metric that
decides the best checkpoint; both training engines use these.
"""
{% endblock %}

from __future__ import annotations

{% block imports %}
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .config import Config
{% endblock %}

MONITOR, MONITOR_MODE = "val/acc", "max"  # the best checkpoint has the highest accuracy
BASELINE = "majority class"  # what a model that learned nothing scores; see build_baseline


{% block model %}
class BagOfEmbeddings(nn.Module):
    """A text as the TF-IDF-weighted sum of its word embeddings, then a linear classifier.

    Weighting the words by their inverse document frequency, and normalising the sum, is
    what makes logistic regression on TF-IDF features strong on a few hundred texts; the
    embeddings add what words have in common. `hidden` > 0 puts an MLP layer before the
    classifier, worth it with tens of thousands of texts. The IDF weights are a buffer:
    the model takes token ids, also once exported.
    """

    def __init__(
        self,
        idf: list[float],  # a weight per word of the vocabulary
        num_classes: int,
        embed_dim: int = 64,
        hidden: int = 0,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.register_buffer("idf", torch.tensor(idf))
        self.embedding = nn.Embedding(len(idf), embed_dim, padding_idx=0)
        # Small initial vectors: N(0, 1) ones would drown what a rare word learns in a few steps.
        nn.init.normal_(self.embedding.weight, std=0.1)
        with torch.no_grad():
            self.embedding.weight[0].zero_()  # padding
        layers: list[nn.Module] = []
        if hidden:
            layers += [nn.Linear(embed_dim, hidden), nn.ReLU()]
        layers += [nn.Dropout(dropout), nn.Linear(hidden or embed_dim, num_classes)]
        self.classifier = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        weights = self.idf[tokens].unsqueeze(-1)  # padding weighs 0
        norm = weights.square().sum(dim=1).sqrt().clamp(min=1e-6)
        return self.classifier((self.embedding(tokens) * weights).sum(dim=1) / norm)


def build_model(cfg: Config, meta: dict) -> BagOfEmbeddings:
    return BagOfEmbeddings(
        idf=meta["idf"],
        num_classes=len(meta["labels"]),
        embed_dim=cfg.model.embed_dim,
        hidden=cfg.model.hidden,
        dropout=cfg.model.dropout,
    )
{% endblock %}


def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model: the loss to minimise, and the (outputs, targets) that
    the metrics of build_metrics are updated with. Training, evaluation and the baseline
    all go through it: a model with other inputs, or a loss that needs them, changes here."""
    tokens, labels = batch
    logits = model(tokens)
    return F.cross_entropy(logits, labels), logits, labels


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

    def forward(self, inputs: torch.Tensor, *more_inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(inputs), -1)


def build_baseline(meta: dict) -> ClassPrior:
    return ClassPrior(meta["class_counts"])
