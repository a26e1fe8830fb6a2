"""What both training engines share: the resumable loader, the learning-rate schedule, the
random state, the evaluation pass, what "best" means, and the guards that stop a run
(signals, divergence).

Keeping these in one place is what makes the plain-PyTorch and Lightning engines train the
same steps, on the same batches, to the same metrics.
"""

from __future__ import annotations

import contextlib
import math
import random
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from torchmetrics import MeanMetric, MetricCollection

from ..config import Config
from ..model import BASELINE, MONITOR, MONITOR_MODE, build_baseline, build_metrics, step
from .hardware import loader_processes


class Diverged(Exception):
    """The loss, or the model itself, became nan or inf: training stops before that state is
    saved anywhere.

    The training loss is checked before each backward pass; the validation loss and every
    weight and buffer (a batch norm's running statistics too) before anything is saved.
    """

    def __init__(self, step: int, loss: float | None, lr: float, which: str = "loss"):
        if loss is None:
            seen = "nan or inf"
        else:
            seen = loss if not math.isfinite(loss) else "nan or inf (in another process)"
        super().__init__(
            f"training diverged at step {step}: the {which} is {seen}; lower the learning rate "
            f"(--lr, now {lr:.3g}) or look for extreme values in the data"
        )
        self.step = step


def check_finite(model: torch.nn.Module, step: int, lr: float) -> None:
    """Refuse to go on (and to save) with a nan or inf anywhere in the model's state."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise Diverged(step, None, lr, which=f"model's {name}")


def val_loss_metric() -> MeanMetric:
    """The mean validation loss; a nan in it stays (by default torchmetrics drops it with a
    warning), so that a diverged model is seen as one."""
    return MeanMetric(nan_strategy=math.nan)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a step; last.ckpt holds that step. A second
    Ctrl-C stops at once (`at_once`), keeping the last checkpoint as it was."""

    def __init__(self, signum: int | None, step: int | None, at_once: bool = False):
        self.signum = signum or signal.SIGTERM  # a process that only heard it from another
        self.step, self.at_once = step, at_once
        name = signal.Signals(self.signum).name
        super().__init__(
            f"{name} again, stopped at once" if at_once else f"{name} after step {step}"
        )


@dataclass
class Outcome:
    """How a run ended: why it stopped, its best and last evaluations, and its folder."""

    reason: str  # "max_steps" | "epochs" | "early_stopping" | "perfect"
    best: dict[str, float]
    last: dict[str, float]
    baseline: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluations:
    """A run's evaluations so far: the best (see `better`), the latest, and how many came
    since the best, which early stopping counts. Checkpoints hold them as "progress"."""

    best: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0  # evaluations since the best one

    @classmethod
    def of(cls, progress: dict[str, Any]) -> Evaluations:
        """The evaluations of a checkpoint's progress."""
        return cls(progress["best"], progress["last"], progress["bad_evals"])

    def add(self, row: dict[str, float], cfg: Config, perfect: float | None) -> str | None:
        """Count an evaluation in; returns why early stopping ends the run after it, if it
        does (see early_stop)."""
        self.last = row
        if better(row, self.best, cfg.train.tie_delta):
            self.best, self.bad_evals = row, 0
        else:
            self.bad_evals += 1
        return early_stop(self.bad_evals, self.best, cfg, perfect)

    @property
    def improved(self) -> bool:
        """Whether the latest evaluation is the best."""
        return bool(self.last) and self.bad_evals == 0


def better(row: dict[str, float], best: dict[str, float] | None, tie_delta: float = 0.0) -> bool:
    """Whether an evaluation beats the best so far: a better monitored metric, or an equal
    one with a validation loss lower by more than `tie_delta` (train.tie_delta: accuracy ties
    often on small validation sets, and the model that is surer of its answers is the better
    one, when it is meaningfully surer). Both engines, best.ckpt and early stopping follow
    this."""
    if not best:
        return True
    value, previous = row[MONITOR], best[MONITOR]
    if value == previous:
        return row["val/loss"] < best["val/loss"] - tie_delta
    return value > previous if MONITOR_MODE == "max" else value < previous


def perfect_score(meta: dict) -> float | None:
    """The best value the monitored metric can take, if it has one (val/acc: 1.0): the bound
    that torchmetrics gives the metric of build_metrics that MONITOR names."""
    metric = dict(build_metrics(meta).items()).get(MONITOR.removeprefix("val/"))
    if metric is None:  # the validation loss, say: no bound
        return None
    bound = metric.plot_upper_bound if MONITOR_MODE == "max" else metric.plot_lower_bound
    return None if bound is None else float(bound)


def early_stop(
    bad_evals: int, best: dict[str, float], cfg: Config, perfect: float | None
) -> str | None:
    """Whether early stopping ends the run after this evaluation, and why: `patience`
    evaluations without a better one ("early_stopping"); or, once the monitored metric is
    perfect, the first evaluation that is not better ("perfect"): patience waits for a better
    score, and none can come. None: train on. Patience 0 turns both off."""
    patience = cfg.train.patience
    if not patience or bad_evals == 0:
        return None
    if bad_evals >= patience:
        return "early_stopping"
    if perfect is not None and best[MONITOR] == perfect:
        return "perfect"
    return None


# --- data loading ----------------------------------------------------------------------


# A dataset of more samples than this is not shuffled by a permutation (8 bytes a sample):
# its samples are drawn at random with replacement, as language models draw text windows.
PERMUTATION_LIMIT = 2**24
CHUNK = 2**16  # indices made at a time, per process


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way through, for a mid-epoch resume,
    and that makes its indices a chunk at a time, never a list of the whole epoch, so that
    a dataset of a billion samples costs no more memory than a small one.

    Up to PERMUTATION_LIMIT samples, an epoch is DistributedSampler's own, index for index;
    beyond, each index is drawn at random (with replacement) from the epoch's seeded
    generator. Either way the epoch's order is the same on every rank, each rank takes every
    world_size-th position of it, and the last positions wrap around to pad the ranks equal.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.start = 0  # samples of this rank's share to skip, once

    def __iter__(self):
        first = self.rank + self.start * self.num_replicas  # this rank's first position
        self.start = 0
        return self.indices(first)

    def indices(self, first: int):
        n, world = len(self.dataset), self.num_replicas
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        permutation = draws = None
        if self.shuffle and n <= PERMUTATION_LIMIT:
            permutation = torch.randperm(n, generator=generator)
        span = CHUNK * world  # positions per chunk: a multiple of world, so ranks stay aligned
        for begin in range(0, self.total_size, span):
            end = min(begin + span, self.total_size)
            if self.shuffle and permutation is None:
                # Drawn for skipped chunks too: a resumed epoch draws what the original drew.
                draws = torch.randint(n, (end - begin,), generator=generator)
            if end <= first:
                continue
            positions = torch.arange(max(first, begin + self.rank), end, world)
            if draws is not None:
                yield from draws[positions - begin].tolist()
            elif permutation is not None:
                yield from permutation[positions % n].tolist()
            else:
                yield from (positions % n).tolist()


class ResumableLoader(DataLoader):
    """A DataLoader that knows how far into its epoch it is.

    Its state_dict() travels in every checkpoint; a resumed run loads it and continues with
    the very batch the uninterrupted run would have seen next. Lightning calls both methods
    itself (a loader with them is "stateful" to Lightning).
    """

    sampler: ResumableSampler

    def __iter__(self):
        self.served = self.sampler.start // self.batch_size  # batches skipped by a resume
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        epoch, served = self.sampler.epoch, getattr(self, "served", 0)
        if served >= len(self):  # the epoch is over: resume at the start of the next one
            epoch, served = epoch + 1, 0
        return {"epoch": epoch, "served": served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["served"] * self.batch_size


def make_loader(
    dataset: Dataset,
    cfg: Config,
    rank: int,
    world_size: int,
    device: torch.device,
    train: bool,
) -> ResumableLoader:
    """A loader over this rank's share of the data, shuffled per epoch when training.

    For evaluation, train.eval_batches batches of samples spread evenly over the dataset
    (the same ones every time) stand for all of it, so that evaluating a large dataset
    takes the same time as a small one.
    """
    if not train and cfg.train.eval_batches:
        dataset = spread(dataset, cfg.train.eval_batches * cfg.train.batch_size)
    sampler = ResumableSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=cfg.train.seed
    )
    return ResumableLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        drop_last=train and len(dataset) >= cfg.train.batch_size * world_size,
        **loader_processes(cfg.train.num_workers, world_size),
        pin_memory=device.type == "cuda",  # page-locked memory for non-blocking copies
        # Its own generator: starting an epoch then draws nothing from the global one,
        # whose state the checkpoint carries, so a resumed run draws what the original did.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def spread(dataset: Dataset, count: int) -> Dataset:
    """`count` samples spread evenly over the dataset, or all of it when it has no more."""
    n = len(dataset)
    return dataset if n <= count else Subset(dataset, [i * n // count for i in range(count)])


def eval_interval(cfg: Config, batches_per_epoch: int) -> int:
    """Batches between evaluations: eval_every optimizer steps, and at least one an epoch."""
    return max(1, min(cfg.train.eval_every * cfg.train.accumulate, batches_per_epoch))


def evaluation_due(cfg: Config, batches: int, batches_per_epoch: int, step: int) -> bool:
    """Whether the optimizer step just taken, after `batches` batches in all, is evaluated:
    every eval_every steps (and at least once an epoch), at the end of the budget, and at
    the end of the last epoch when epochs are capped."""
    epochs, ended = divmod(batches, batches_per_epoch)
    capped = cfg.train.epochs is not None and ended == 0 and epochs >= cfg.train.epochs
    every = batches % eval_interval(cfg, batches_per_epoch) == 0
    return every or step >= cfg.train.max_steps or capped


# --- the learning rate and the random state ---------------------------------------------


class WarmupCosine:
    """The learning-rate factor of each step: linear warm-up, then cosine decay to a tenth.

    A callable object, not a function, so that LambdaLR saves its settings in checkpoints.
    `extend` gives a resumed run a larger budget without a jump: the rate continues from
    where it was and decays along a new cosine to the same floor by the new last step.
    """

    floor = 0.1

    def __init__(self, warmup_steps: int, total_steps: int):
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.decay_start, self.decay_from = warmup_steps, 1.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.decay_start)
        progress = min(1.0, (step - self.decay_start) / span)
        cosine = 0.5 * (1 + math.cos(math.pi * progress))  # from 1 down to 0
        return self.floor + (self.decay_from - self.floor) * cosine

    def extend(self, step: int, total_steps: int) -> None:
        """From `step` on, decay from the current factor so as to reach the floor at total_steps."""
        if total_steps != self.total_steps and step >= self.warmup_steps:
            self.decay_start, self.decay_from = step, self(step)
        self.total_steps = total_steps

    def restart(self, step: int, total_steps: int) -> None:
        """From `step` on, decay from the full (new) rate to the floor at total_steps."""
        self.decay_start, self.decay_from = max(step, self.warmup_steps), 1.0
        self.total_steps = total_steps


def build_optimizer(
    model: torch.nn.Module, cfg: Config, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on the weights (not on biases and norms), and the schedule."""
    t = cfg.train
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": t.weight_decay, "name": "weights"},
        {"params": no_decay, "weight_decay": 0.0, "name": "biases and norms"},
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=t.lr,
        # Fused AdamW is one kernel per step instead of one per parameter, on CUDA only.
        fused=device.type == "cuda",
    )
    schedule = WarmupCosine(int(t.warmup_ratio * t.max_steps), t.max_steps)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def continue_schedule(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    cfg: Config,
    saved: dict[str, Any],
    step: int,
) -> None:
    """A resumed run's optimizer and schedule, as the settings given on resume ask: a larger
    budget continues the rate from where it was; a new --lr decays from that rate, from this
    step to the end of the budget; a new weight decay applies from here."""
    t, schedule = cfg.train, scheduler.lr_lambdas[0]
    if t.lr != saved["lr"]:
        scheduler.base_lrs = [lr * t.lr / saved["lr"] for lr in scheduler.base_lrs]
        schedule.restart(step, t.max_steps)
    else:
        schedule.extend(step, t.max_steps)
    # The rate of the next step, from the schedule as it is now: the optimizer restored the
    # old one, which the scheduler would replace only after that step.
    factor = schedule(scheduler.last_epoch)
    for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
        group["lr"] = base_lr * factor
        if group.get("name") == "weights":
            group["weight_decay"] = t.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA and MPS too


def get_rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- evaluation ------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    loader: DataLoader,
    metrics: MetricCollection,
    device: torch.device,
    autocast: contextlib.AbstractContextManager | None = None,
    sync: bool = True,
) -> dict[str, float]:
    """The loss and metrics of `model` over the whole loader, reduced over all ranks (or,
    with sync=False, over this process's loader alone)."""
    was_training = model.training
    model.eval()
    metrics.reset()
    losses = val_loss_metric().to(device)
    distributed = sync and dist.is_available() and dist.is_initialized()
    for metric in [losses, *metrics.values()]:  # torchmetrics reduces whenever DDP is on
        metric.distributed_available_fn = lambda: distributed
    for batch in loader:
        with autocast or contextlib.nullcontext():
            loss, outputs, targets = step(model, to_device(batch, device))
        losses.update(loss.float(), weight=len(targets))
        metrics.update(outputs.float(), targets)
    model.train(was_training)
    results = {"val/loss": losses.compute().item()}
    results.update({f"val/{k}": v.item() for k, v in metrics.compute().items()})
    return results


def measure_baseline(dataset: Dataset, meta: dict, cfg: Config) -> dict[str, Any]:
    """What a model that learned nothing (model.py's build_baseline) scores on the whole
    validation split, on the CPU: the bar every evaluation is shown against."""
    device = torch.device("cpu")
    loader = make_loader(dataset, cfg, 0, 1, device, train=False)
    # Rank 0 alone, over the whole split: nothing to reduce over the other processes.
    scores = evaluate_model(build_baseline(meta), loader, build_metrics(meta), device, sync=False)
    return {"name": BASELINE, **scores}


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensors, or tuples, lists and dicts of them) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


# --- what stops a run --------------------------------------------------------------------


class StopSignals:
    """Ctrl-C (SIGINT) and SIGTERM ask training to stop after the current step.

    The engine then writes last.ckpt and raises Interrupted. A second Ctrl-C stops at once,
    keeping the checkpoints as they were. SIGTERM is what SLURM, Kubernetes and spot
    instances send before they kill a process.
    """

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def reclaim(self) -> None:
        """Handle SIGTERM here again, after a framework installed a handler of its own."""
        if self.previous:  # installed: in the main thread
            signal.signal(signal.SIGTERM, self.handle)

    def handle(self, signum: int, frame: Any) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise Interrupted(signum, None, at_once=True)
        self.received = signum

    def __exit__(self, *exc_info: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
