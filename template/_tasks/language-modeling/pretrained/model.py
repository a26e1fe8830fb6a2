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
import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import Perplexity

from .config import Config
from .plumbing import ConfigError, hub
{% endblock %}
{% block model %}
class CausalLM(nn.Module):
    """A pretrained causal language model (model.pretrained: SmolLM2-135M by default):
    token ids in, next-token logits out. Without the key-value cache: a window is read
    whole, in training as in the exported model, which takes token ids alone.

    With LoRA (model.lora_rank), the pretrained weights stay frozen and small low-rank
    adapters of the attention layers learn; `merged` folds them into the weights.
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

    def merged(self) -> CausalLM:
        """This model with LoRA's adapters merged into the weights, a plain transformers
        model again (what export writes); without LoRA, as it is."""
        if hasattr(self.hf, "merge_and_unload"):
            self.hf = self.hf.merge_and_unload()
        return self


def build_model(cfg: Config, meta: dict) -> CausalLM:
    """model.pretrained, with LoRA's adapters if model.lora_rank is set.

    A new run loads the pretrained weights and records the network's settings in meta,
    which every checkpoint holds: from a checkpoint, the network is rebuilt from them,
    without the hub, and takes the checkpoint's weights.
    """
    from transformers import AutoModelForCausalLM

    if "network" in meta:
        hf = hub.rebuild(AutoModelForCausalLM, meta["network"])
    else:
        hf = hub.load_pretrained(AutoModelForCausalLM, cfg.model.pretrained)
        size = sum(p.numel() for p in hf.parameters())
        hub.note(f"{cfg.model.pretrained}: the pretrained {type(hf).__name__}, {size:,} weights")
        meta["network"] = hub.settings_of(hf)
        meta["lora"] = hub.lora_settings(cfg.model.lora_rank)
    if meta["block_size"] > hf.config.max_position_embeddings:
        raise ConfigError(
            f"data.block_size {meta['block_size']} is longer than the model reads "
            f"({hf.config.max_position_embeddings} tokens)"
        )
    if meta["lora"]:
        hf = hub.with_lora(hf, meta["lora"])
    return CausalLM(hf, meta["block_size"])


{% endblock %}
