{# The scratch project's model.py with a pretrained Hugging Face model as the network: the
   loss, metrics and baseline are the same. #}
{% extends "template/_tasks/text-classification/model.py" %}
{% block docstring %}
"""The model for text classification: a pretrained Hugging Face model with a new head.

Besides the network, a task defines its loss, its validation metrics and the metric that
decides the best checkpoint; both training engines use these.
"""
{% endblock %}
{% block imports %}
import logging

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from . import pretrained
from .config import Config

log = logging.getLogger(__name__)
{% endblock %}
{% block model %}
class TextClassifier(pretrained.Pretrained):
    """A pretrained transformer (model.pretrained: DistilBERT by default) and a new
    classification head: token ids in, a logit per class out.

    The padding tokens are masked out here, from the ids, so that the model (and its
    export) takes token ids alone, as the scratch one does.
    """

    def __init__(self, hf: nn.Module, pad_id: int, freeze_backbone: bool = False):
        super().__init__(hf, freeze_backbone)
        self.pad_id = pad_id

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, attention_mask=(tokens != self.pad_id).long()).logits


def build_model(cfg: Config, meta: dict) -> TextClassifier:
    """model.pretrained with a new head for meta's labels.

    A new run loads the pretrained weights and records the network's settings in meta,
    which every checkpoint holds: from a checkpoint, the network is rebuilt from them,
    without the hub, and takes the checkpoint's weights.
    """
    from transformers import AutoModelForSequenceClassification

    if "network" in meta:
        hf = pretrained.rebuild(AutoModelForSequenceClassification, meta["network"])
    else:
        labels = meta["labels"]
        hf = pretrained.load(
            AutoModelForSequenceClassification,
            cfg.model.pretrained,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            pad_token_id=meta["tokenizer"]["pad_id"],  # decoder models need it to classify
            ignore_mismatched_sizes=True,  # the checkpoint's head, for other classes, is dropped
        )
        head = pretrained.new_head(hf)
        log.info(
            f"{cfg.model.pretrained}: the pretrained {type(hf.base_model).__name__}, and a new "
            f"head ({', '.join(head)}) for {len(labels)} labels"
        )
        meta["network"] = hf.config.to_dict()
    return TextClassifier(hf, meta["tokenizer"]["pad_id"], cfg.model.freeze_backbone)
{% endblock %}
