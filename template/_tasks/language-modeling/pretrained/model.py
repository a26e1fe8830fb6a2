{# The scratch project's model.py with a pretrained Hugging Face causal language model as
   the network: the loss, metrics and baseline are the same. #}
{% extends "template/_tasks/language-modeling/model.py" %}
{% block docstring %}
"""The model for language modelling: a pretrained Hugging Face causal language model.

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
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import Perplexity

from . import pretrained
from .config import Config

log = logging.getLogger(__name__)
{% endblock %}
{% block model %}
class CausalLM(nn.Module):
    """A pretrained causal language model (model.pretrained: SmolLM2-135M by default):
    token ids in, next-token logits out. Without the key-value cache: a window is read
    whole, in training as in the exported model, which takes token ids alone.

    With LoRA (model.lora_rank), the pretrained weights stay frozen and small low-rank
    adapters of the attention layers learn.
    """

    def __init__(self, hf: nn.Module, block_size: int):
        super().__init__()
        self.hf = hf
        self.block_size = block_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=tokens, use_cache=False).logits

    @torch.no_grad()
    def generate(
        self,
        tokens: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append max_new_tokens sampled tokens to each row of `tokens` (batch, length),
        each drawn from the `top_k` likeliest (all when None)."""
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.block_size :])[:, -1] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            next_token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
            tokens = torch.cat([tokens, next_token], dim=1)
        return tokens


def build_model(cfg: Config, meta: dict) -> CausalLM:
    """model.pretrained, with LoRA's adapters if model.lora_rank is set.

    A new run loads the pretrained weights and records the network's settings in meta,
    which every checkpoint holds: from a checkpoint, the network is rebuilt from them,
    without the hub, and takes the checkpoint's weights.
    """
    from transformers import AutoModelForCausalLM

    if "network" in meta:
        hf = pretrained.rebuild(AutoModelForCausalLM, meta["network"])
    else:
        hf = pretrained.load(AutoModelForCausalLM, cfg.model.pretrained)
        size = sum(p.numel() for p in hf.parameters())
        log.info(f"{cfg.model.pretrained}: the pretrained {type(hf).__name__}, {size:,} weights")
        meta["network"] = hf.config.to_dict()
        meta["lora"] = lora_settings(cfg.model.lora_rank)
    reads = getattr(hf.config, "max_position_embeddings", None)
    if reads is not None and meta["block_size"] > reads:
        raise pretrained.ModelError(
            f"data.block_size {meta['block_size']} is longer than model.pretrained reads "
            f"({reads} tokens); give data.block_size={reads} or less"
        )
    if meta["lora"]:
        hf = with_lora(hf, meta["lora"])
    return CausalLM(hf, meta["block_size"])


def lora_settings(rank: int) -> dict | None:
    """peft's LoraConfig for adapters of this rank (None: no LoRA), as meta keeps them."""
    if rank <= 0:
        return None
    return {"r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "task_type": "CAUSAL_LM"}


def with_lora(hf: nn.Module, settings: dict) -> nn.Module:
    """The model with LoRA adapters (peft) on the attention layers peft picks for its
    architecture: the pretrained weights frozen, the adapters, which start at zero, trained."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(hf, LoraConfig(**settings))


{% endblock %}
