"""The model for tabular regression: an MLP over numeric inputs and category embeddings.

Besides the network, a task defines its loss, its validation metrics and the metric that
decides the best checkpoint; both training engines use these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanSquaredError, MetricCollection, R2Score

from .config import Config

MONITOR, MONITOR_MODE = "val/mse", "min"  # the best checkpoint has the lowest error
BASELINE = "mean predictor"  # what a model that learned nothing scores; see build_baseline


def embedding_size(categories: int) -> int:
    """The width of a categorical input's embedding: grows slowly with the number of
    categories (fast.ai's rule of thumb), at most 32."""
    return min(32, round(1.6 * categories**0.56))


class TabularMLP(nn.Module):
    """An MLP on standardised numbers and learned embeddings of categories, predicting the
    target in its own units.

    It takes raw values: `numeric` (n, numeric columns) with NaN for blank cells, and
    `categorical` (n, categorical columns) category indices (data.py: 0 other, 1 blank,
    2... the training categories). Blanks take the training median, and a 0/1 input says
    which were blank (for the columns in `indicators`). The statistics are buffers, so the
    exported program does all this itself.
    """

    def __init__(
        self,
        median: list[float],
        mean: list[float],
        std: list[float],
        indicators: list[int],
        cardinalities: list[int],
        y_mean: float = 0.0,
        y_std: float = 1.0,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.register_buffer("median", torch.tensor(median, dtype=torch.float32))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("indicators", torch.tensor(indicators, dtype=torch.long))
        self.register_buffer("y_mean", torch.tensor(y_mean))
        self.register_buffer("y_std", torch.tensor(y_std))
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_size(n)) for n in cardinalities)
        width = len(median) + len(indicators) + sum(e.embedding_dim for e in self.embeddings)
        blocks = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, 1))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        blank = torch.isnan(numeric)
        numbers = (torch.where(blank, self.median, numeric) - self.mean) / self.std
        inputs = [numbers, blank[:, self.indicators].to(numbers.dtype)]
        inputs += [embed(categorical[:, i]) for i, embed in enumerate(self.embeddings)]
        standardised = self.net(torch.cat(inputs, dim=1)).squeeze(-1)
        return standardised * self.y_std + self.y_mean


def build_model(cfg: Config, meta: dict) -> TabularMLP:
    return TabularMLP(
        median=meta["median"],
        mean=meta["mean"],
        std=meta["std"],
        indicators=[meta["numeric"].index(name) for name in meta["indicators"]],
        # Each column's categories, and the indices for "other" and "blank".
        cardinalities=[len(categories) + 2 for categories in meta["categorical"].values()],
        y_mean=meta["y_mean"],
        y_std=meta["y_std"],
        hidden=cfg.model.hidden,
        layers=cfg.model.layers,
        dropout=cfg.model.dropout,
    )


def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model: the loss to minimise, and the (outputs, targets) that
    the metrics of build_metrics are updated with. Training, evaluation and the baseline
    all go through it: a model with other inputs, or a loss that needs them, changes here."""
    (numeric, categorical), targets = batch
    predictions = model(numeric, categorical)
    return F.mse_loss(predictions, targets), predictions, targets


def build_metrics(meta: dict) -> MetricCollection:
    """Validation metrics, updated with (model output, target) batches."""
    return MetricCollection({"mse": MeanSquaredError(), "r2": R2Score()})


class MeanPredictor(nn.Module):
    """A model that learned nothing: the training targets' mean, whatever the input (R2 ~ 0)."""

    def __init__(self, mean: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        return self.mean.expand(len(numeric))


def build_baseline(meta: dict) -> MeanPredictor:
    return MeanPredictor(meta["y_mean"])
