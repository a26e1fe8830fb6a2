{% block docstring %}
"""The model for image classification: a small CNN, plain PyTorch.

Besides the network, a task defines its loss, its validation metrics and the metric that
decides the best checkpoint; both training engines use these.
"""
{% endblock %}

from __future__ import annotations

{% block imports %}
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from .config import Config
{% endblock %}

MONITOR, MONITOR_MODE = "val/acc", "max"  # the best checkpoint has the highest accuracy
BASELINE = "majority class"  # what a model that learned nothing scores; see build_baseline


{% block network %}
class SmallCNN(nn.Module):
    """A strided stem, three conv blocks, global average pooling and a linear classifier.

    The stem halves the image at once: a 64-pixel image costs what a 32-pixel one did
    without it. Global average pooling makes any image size work. The per-channel mean and
    std of the training images are buffers: the model takes raw pixels in [0, 1], also once
    exported. `augment` changes the training images (only in training mode).

    With `average`, evaluation, predict and export use `averaged`, a moving average of the
    weights and batch-norm statistics over the training steps: at a high learning rate the
    weights jump from step to step, their average moves smoothly. It updates at each
    training forward pass, like batch norm's statistics, and is saved with them.
    """

    def __init__(
        self,
        num_classes: int,
        width: int = 16,
        dropout: float = 0.1,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        augment: nn.Module | None = None,
        average: float = 0.0,
    ):
        super().__init__()
        self.augment = augment or nn.Identity()
        self.register_buffer("mean", torch.tensor(mean or [0.5] * 3).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std or [0.25] * 3).view(1, 3, 1, 1))
        self.network = nn.Sequential(
            conv_block(3, width, stride=2, pool=False),
            conv_block(width, 2 * width),
            conv_block(2 * width, 4 * width),
            conv_block(4 * width, 8 * width),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(8 * width, num_classes),
        )
        self.averaged = None
        if average:
            self.averaged = AveragedModel(
                self.network, multi_avg_fn=moving_average(average), use_buffers=True
            ).requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = (self.augment(images) - self.mean) / self.std
        if self.averaged is None:
            return self.network(images)
        if not self.training:
            return self.averaged(images)
        self.averaged.update_parameters(self.network)  # the weights of the steps so far
        return self.network(images)


def moving_average(decay: float):
    """AveragedModel's update, averaged <- decay * averaged + (1 - decay) * current, its decay
    growing from 0.1 to `decay` over the first steps (as TensorFlow's moving averages do)."""

    def update(averaged: list, current: list, steps: torch.Tensor) -> None:
        rate = min(decay, (1 + steps.item()) / (10 + steps.item()))
        for average, value in zip(averaged, current, strict=True):
            if average.is_floating_point():
                average.lerp_(value, 1 - rate)
            else:  # batch norm's count of batches
                average.copy_(value)

    return update


def conv_block(
    channels_in: int, channels_out: int, stride: int = 1, pool: bool = True
) -> nn.Sequential:
    layers = [
        nn.Conv2d(channels_in, channels_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers, nn.MaxPool2d(2)) if pool else nn.Sequential(*layers)


{% endblock %}
class Augment(nn.Module):
    """Random changes to a batch of training images, in training mode only: a crop of 60%
    to 100% of the image's area (aspect 3:4 to 4:3) stretched back to full size, a rotation
    of up to 10 degrees and, with `hflip`, a left-right mirror half of the time, all in one
    resampling; then brightness, contrast and saturation, each changed by up to 20%.

    Its random numbers come from torch's generator on the CPU, as dropout's do there: the
    checkpoint saves that generator's state, so a resumed run draws the same changes.
    """

    def __init__(self, hflip: bool = False):
        super().__init__()
        self.hflip = hflip

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return images
        n = len(images)
        draws = torch.rand(n, 9).to(images.device)  # on the CPU's generator, then moved
        area = 0.6 + 0.4 * draws[:, 0]
        aspect = torch.exp((2 * draws[:, 1] - 1) * math.log(4 / 3))
        width, height = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)
        # The crop's centre, anywhere that keeps the crop inside the image (coordinates -1..1).
        x, y = (1 - width) * (2 * draws[:, 2] - 1), (1 - height) * (2 * draws[:, 3] - 1)
        angle = math.radians(10) * (2 * draws[:, 4] - 1)
        if self.hflip:
            width = torch.where(draws[:, 5] < 0.5, -width, width)
        cos, sin = angle.cos(), angle.sin()
        # Where each output pixel reads from: scaled to the crop, rotated, moved to its centre.
        theta = torch.stack(
            [
                torch.stack([cos * width, -sin * height, x], dim=1),
                torch.stack([sin * width, cos * height, y], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, padding_mode="reflection", align_corners=False)
        brightness, contrast, saturation = (
            0.8 + 0.4 * draws[:, i].view(n, 1, 1, 1) for i in (6, 7, 8)
        )
        images = images * brightness
        mean = grey(images).mean(dim=(2, 3), keepdim=True)
        images = mean + (images - mean) * contrast
        images = grey(images) + (images - grey(images)) * saturation
        return images.clamp(0, 1)


def grey(images: torch.Tensor) -> torch.Tensor:
    """The luma of RGB images (ITU-R 601), as a 1-channel image."""
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


{% block build_model %}
def build_model(cfg: Config, meta: dict) -> SmallCNN:
    # Your images are augmented; the built-in shapes, generated afresh, need not be.
    augment = cfg.data.augment and cfg.data.path is not None
    return SmallCNN(
        num_classes=len(meta["classes"]),
        width=cfg.model.width,
        dropout=cfg.model.dropout,
        mean=meta["mean"],
        std=meta["std"],
        augment=Augment(cfg.data.hflip) if augment else None,
        average=cfg.model.average,
    )


{% endblock %}
def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model: the loss to minimise, and the (outputs, targets) that
    the metrics of build_metrics are updated with. Training, evaluation and the baseline
    all go through it: a model with other inputs, or a loss that needs them, changes here."""
    images, labels = batch
    logits = model(images)
    return F.cross_entropy(logits, labels), logits, labels


def build_metrics(meta: dict) -> MetricCollection:
    """Validation metrics, updated with (model output, target) batches."""
    return MetricCollection({"acc": MulticlassAccuracy(len(meta["classes"]), average="micro")})


class ClassPrior(nn.Module):
    """A model that learned nothing: the training classes' frequencies, whatever the input
    (its accuracy is the majority class's share, its loss the entropy of the classes)."""

    def __init__(self, counts: list[int]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(counts, dtype=torch.float).add(1).log())

    def forward(self, inputs: torch.Tensor, *more_inputs: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(inputs), -1)


def build_baseline(meta: dict) -> ClassPrior:
    return ClassPrior(meta["class_counts"])
