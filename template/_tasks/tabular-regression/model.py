"""The model for tabular regression: an MLP, plain PyTorch.

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


class MLPRegressor(nn.Module):
    """An MLP on standardised inputs, predicting the target in its own units.

    The scaling statistics are buffers: the model takes raw feature values and returns
    raw predictions, also once exported.
    """

    def __init__(
        self,
        in_features: int,
        hidden: int = 128,
        layers: int = 2,
        dropout: float = 0.0,
        x_mean: list[float] | None = None,
        x_std: list[float] | None = None,
        y_mean: float = 0.0,
        y_std: float = 1.0,
    ):
        super().__init__()
        self.register_buffer("x_mean", torch.tensor(x_mean or [0.0] * in_features))
        self.register_buffer("x_std", torch.tensor(x_std or [1.0] * in_features))
        self.register_buffer("y_mean", torch.tensor(y_mean))
        self.register_buffer("y_std", torch.tensor(y_std))
        blocks, width = [], in_features
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        standardised = self.net((features - self.x_mean) / self.x_std).squeeze(-1)
        return standardised * self.y_std + self.y_mean


def build_model(cfg: Config, meta: dict) -> MLPRegressor:
    return MLPRegressor(
        in_features=len(meta["columns"]),
        hidden=cfg.model.hidden,
        layers=cfg.model.layers,
        dropout=cfg.model.dropout,
        x_mean=meta["x_mean"],
        x_std=meta["x_std"],
        y_mean=meta["y_mean"],
        y_std=meta["y_std"],
    )


def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model: the loss to minimise, and the (outputs, targets) that
    the metrics of build_metrics are updated with. Training, evaluation and the baseline
    all go through it: a model with other inputs, or a loss that needs them, changes here."""
    features, targets = batch
    predictions = model(features)
    return F.mse_loss(predictions, targets), predictions, targets


def build_metrics(meta: dict) -> MetricCollection:
    """Validation metrics, updated with (model output, target) batches."""
    return MetricCollection({"mse": MeanSquaredError(), "r2": R2Score()})


class MeanPredictor(nn.Module):
    """A model that learned nothing: the training targets' mean, whatever the input (R2 ~ 0)."""

    def __init__(self, mean: float):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mean.expand(len(features))


def build_baseline(meta: dict) -> MeanPredictor:
    return MeanPredictor(meta["y_mean"])
