{% block docstring %}
"""The model for language modelling: a small causal transformer (GPT), plain PyTorch.

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
from torchmetrics import Metric, MetricCollection
from torchmetrics.text import Perplexity

from .config import Config
{% endblock %}

MONITOR, MONITOR_MODE = "val/loss", "min"  # the best checkpoint has the lowest loss
BASELINE = "unigram"  # what a model that learned nothing scores; see build_baseline


{% block model %}
class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP."""

    def __init__(self, n_embd: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.qkv = nn.Linear(n_embd, 3 * n_embd)
        self.proj = nn.Linear(n_embd, n_embd)
        # On the attention's output, not inside the fused kernel: dropout_p > 0 there
        # sends the CPU to a slower path that doubles the time of a step.
        self.drop = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(n_embd, 4 * n_embd),
            nn.GELU(),
            nn.Linear(4 * n_embd, n_embd),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, channels = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(channels, dim=2)
        # (batch, heads, length, head size) for the fused attention kernel
        q, k, v = (t.view(batch, length, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(attention.transpose(1, 2).reshape(batch, length, channels)))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token and position embeddings, transformer blocks, and next-token logits: a GPT."""

    def __init__(
        self,
        vocab_size: int,
        block_size: int,
        n_layer: int = 2,
        n_head: int = 4,
        n_embd: int = 64,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.block_size = block_size
        self.token_embedding = nn.Embedding(vocab_size, n_embd)
        self.position_embedding = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(Block(n_embd, n_head, dropout) for _ in range(n_layer)))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.drop(self.token_embedding(tokens) + self.position_embedding(positions))
        return self.head(self.ln_f(self.blocks(x)))

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


def build_model(cfg: Config, meta: dict) -> GPT:
    return GPT(
        vocab_size=meta["vocab_size"],
        block_size=meta["block_size"],
        n_layer=cfg.model.n_layer,
        n_head=cfg.model.n_head,
        n_embd=cfg.model.n_embd,
        dropout=cfg.model.dropout,
    )


{% endblock %}
def step(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model: the loss to minimise, and the (outputs, targets) that
    the metrics of build_metrics are updated with. Training, evaluation and the baseline
    all go through it: a model with other inputs, or a loss that needs them, changes here."""
    tokens, targets = batch
    logits = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return loss, logits, targets


def build_metrics(meta: dict) -> MetricCollection:
    """Validation metrics, updated with (model output, target) batches."""
    return MetricCollection({"ppl": Perplexity(), "bpb": BitsPerByte(meta["token_bytes"])})


class BitsPerByte(Metric):
    """The cross-entropy in bits per byte of UTF-8 text: unlike the loss, which is per
    token, it compares models whose tokenizers differ (char and bpe)."""

    full_state_update = False

    def __init__(self, token_bytes: list[int]):
        super().__init__()
        # The UTF-8 bytes of each token. Not saved in checkpoints: meta holds it.
        self.register_buffer("token_bytes", torch.tensor(token_bytes), persistent=False)
        self.add_state("bits", default=torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("bytes", default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        nats = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
        self.bits += nats / math.log(2)
        self.bytes += self.token_bytes[targets].sum()

    def compute(self) -> torch.Tensor:
        return self.bits / self.bytes


class Unigram(nn.Module):
    """A model that learned nothing but the tokens' frequencies in the training text: its
    loss is the text's entropy per token, with no context at all."""

    def __init__(self, counts: list[int]):
        super().__init__()
        self.register_buffer("logits", torch.tensor(counts, dtype=torch.float).add(1).log())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(*tokens.shape, -1)


def build_baseline(meta: dict) -> Unigram:
    return Unigram(meta["token_counts"])
