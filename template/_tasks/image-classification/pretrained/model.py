{# The scratch project's model.py with a pretrained Hugging Face model as the network: the
   augmentation, loss, metrics and baseline are the same. #}
{% extends "template/_tasks/image-classification/model.py" %}
{% block docstring %}
"""The model for image classification: a pretrained Hugging Face model with a new head.

Besides the network, a task defines its loss, its validation metrics and the metric that
decides the best checkpoint; both training engines use these.
"""
{% endblock %}
{% block imports %}
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from . import pretrained
from .config import Config

log = logging.getLogger(__name__)
{% endblock %}
{% block network %}
class ImageClassifier(pretrained.Pretrained):
    """A pretrained image model (model.pretrained: ResNet-18 by default) and a new
    classification head: pixels in [0, 1] in, a logit per class out.

    Images of another size than the model's are resized to it, and all are normalised with
    the mean and std of its image processor, here, so that the model (and its export) takes
    raw pixels, as the scratch one does. `augment` changes the training images (only in
    training mode).
    """

    def __init__(
        self,
        hf: nn.Module,
        processor: dict,
        augment: nn.Module | None = None,
        freeze_backbone: bool = False,
    ):
        super().__init__(hf, freeze_backbone)
        self.augment = augment or nn.Identity()
        self.size = processor["size"]
        self.register_buffer("mean", torch.tensor(processor["mean"]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(processor["std"]).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = self.augment(images)
        if images.shape[-2:] != (self.size, self.size):  # the built-in 32-pixel shapes
            images = F.interpolate(images, size=(self.size, self.size), mode="bilinear")
        return self.hf(pixel_values=(images - self.mean) / self.std).logits


{% endblock %}
{% block build_model %}
def build_model(cfg: Config, meta: dict) -> ImageClassifier:
    """model.pretrained with a new head for meta's classes.

    A new run loads the pretrained weights and records the network's settings in meta,
    which every checkpoint holds: from a checkpoint, the network is rebuilt from them,
    without the hub, and takes the checkpoint's weights.
    """
    from transformers import AutoModelForImageClassification

    if "network" in meta:
        hf = pretrained.rebuild(AutoModelForImageClassification, meta["network"])
    else:
        classes = meta["classes"]
        hf = pretrained.load(
            AutoModelForImageClassification,
            cfg.model.pretrained,
            num_labels=len(classes),
            id2label=dict(enumerate(classes)),
            label2id={name: i for i, name in enumerate(classes)},
            ignore_mismatched_sizes=True,  # the checkpoint's head, for other classes, is dropped
        )
        head = pretrained.new_head(hf)
        log.info(
            f"{cfg.model.pretrained}: the pretrained {type(hf.base_model).__name__}, and a new "
            f"head ({', '.join(head)}) for {len(classes)} classes"
        )
        meta["network"] = hf.config.to_dict()
    # Your images are augmented; the built-in shapes, generated afresh, need not be.
    augment = cfg.data.augment and cfg.data.path is not None
    return ImageClassifier(
        hf,
        meta["processor"],
        augment=Augment(cfg.data.hflip) if augment else None,
        freeze_backbone=cfg.model.freeze_backbone,
    )


{% endblock %}
