{% set sharding = backbone == "pretrained" and hardware == "multi-gpu" %}
"""The training engine: one plain PyTorch loop, readable top to bottom.

`train` sets a run up (its folder, the data, the model, its optimizer, a checkpoint to
resume from), then loops over optimizer steps: each step trains on `accumulate` micro-batches;
every eval_every steps (and at least once an epoch) the model is evaluated, a metrics.csv row
and last.ckpt are written, best.ckpt when the evaluation is better, and the run decides
whether to stop. A checkpoint holds all it takes to continue exactly: weights, optimizer,
schedule, random state and the loader's place in its epoch.

On several devices, `--devices N` relaunches the command through torchrun, one process per
device with DistributedDataParallel (plumbing/distributed.py); rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .config import TASK, Config
from .data import build_datasets
from .model import MONITOR, build_metrics, build_model, step
from .plumbing.distributed import (
    any_rank,
    choose_run_dir_on_rank_zero,
    launch_workers,
    mean_over_ranks,
    setup_distributed,
    wrap,
)
from .plumbing.hardware import resolve_device, resolve_devices, resolve_precision
from .plumbing.record import write_record
from .plumbing.reporting import plot_learning_curves, save_baseline, show
from .plumbing.runs import (
    RUN_NAME_ENV,
    RunClaim,
    check_continuable,
    check_resumable,
    load_weights,
    prepare_run_dir,
    read_checkpoint,
    rebuilding_from,
    save_atomically,
    save_copy,
)
{% if sharding %}
from .plumbing.sharding import check_strategy, load_optimizer_state, no_sync, shard, whole_state
{% endif %}
from .plumbing.tracking import MetricsLog, Progress
from .plumbing.training import (
    Diverged,
    Evaluations,
    Interrupted,
    Outcome,
    StopSignals,
    build_optimizer,
    check_finite,
    continue_schedule,
    evaluate_model,
    evaluation_due,
    get_rng_state,
    make_loader,
    measure_baseline,
    perfect_score,
    seed_everything,
    set_rng_state,
    to_device,
)

ENGINE = "raw"


@dataclass
class State(Evaluations):
    """How far the run is: optimizer steps, the epoch in progress, and the evaluations."""

    step: int = 0
    epoch: int = 0  # counted from 0 here; printed and logged from 1


@dataclass
class Run:
    """Everything a training run works with, made by `setup`."""

    cfg: Config
    run_dir: Path
    rank: int
    world_size: int
    device: torch.device
    meta: dict
    train_loader: Any
    val_loader: Any
    model: torch.nn.Module
    net: torch.nn.Module  # the model as the step calls it (DDP-wrapped on several processes)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    autocast: Any
    metrics: Any
    state: State
    loss_sum: torch.Tensor  # the training loss since the last evaluation
    loss_count: torch.Tensor
    perfect: float | None = None  # the monitored metric's best possible value, if it has one
    log: MetricsLog | None = None  # rank 0
    progress: Progress | None = None
    record: dict | None = None

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]


def train(cfg: Config, resume: str | Path | None = None, trial: Any = None) -> Outcome | None:
    """Train to the step budget, evaluating and checkpointing as it goes; resume from a
    checkpoint. Returns the outcome on rank 0, None on the other ranks (and in the parent
    of a `--devices N` launch, whose workers report instead)."""
    device = resolve_device(cfg.train.accelerator)
    nprocs = resolve_devices(cfg.train.devices, device)
    if "RANK" not in os.environ and nprocs > 1:
        return launch_workers(cfg, resume, nprocs)
    rank, world_size, device = setup_distributed(device)
    checkpoint = read_checkpoint(resume) if resume else None
    if checkpoint is not None:
        check_resumable(checkpoint, cfg, resume, ENGINE)
    run_dir, continuing = choose_run_dir_on_rank_zero(cfg, resume, world_size)
    # The parent of a --devices N launch holds the folder's claim; else rank 0 does.
    claims = rank == 0 and RUN_NAME_ENV not in os.environ
    with RunClaim(run_dir, new_run=not continuing) if claims else contextlib.nullcontext():
        if continuing and rank == 0:
            check_continuable(run_dir)
        with rebuilding_from(resume) if resume else contextlib.nullcontext():
            run = setup(cfg, run_dir, rank, world_size, device, checkpoint, resume)
        baseline = start_reporting(run, checkpoint if continuing else None) if rank == 0 else {}
        try:
            with StopSignals() as signals:
                reason = fit(run, signals, trial)
        except BaseException as error:  # the tracker's run ends as failed or killed
            stop_reporting(run, error)
            raise
        stop_reporting(run)
        if world_size > 1:
            leave(run)
    return Outcome(reason, run.state.best, run.state.last, baseline) if rank == 0 else None


# --- setup -------------------------------------------------------------------------------


def setup(cfg, run_dir, rank, world_size, device, checkpoint, path=None) -> Run:
    """The data, the model and its optimizer, from the checkpoint (at `path`) when there is one."""
    t = cfg.train
    seed_everything(t.seed)  # every rank starts from the same seed, hence the same model
    meta = checkpoint["hyper_parameters"]["meta"] if checkpoint else None
    train_set, val_set, meta = build_datasets(cfg, meta)
    model = build_model(cfg, meta).to(device)
{% if sharding %}
    check_strategy(t.strategy)
    if t.strategy == "fsdp":
        # The checkpoint's weights go into the whole model; the optimizer takes the shards.
        if checkpoint is not None:
            load_weights(model, checkpoint["model"], path)
        shard(model)
{% endif %}
    optimizer, scheduler = build_optimizer(model, cfg, device)
    precision = resolve_precision(t.precision, device)
    run = Run(
        cfg=cfg,
        run_dir=run_dir,
        rank=rank,
        world_size=world_size,
        device=device,
        meta=meta,
        train_loader=make_loader(train_set, cfg, rank, world_size, device, train=True),
        val_loader=make_loader(val_set, cfg, rank, world_size, device, train=False),
        model=model,
        net=model,
        optimizer=optimizer,
        scheduler=scheduler,
        # Mixed precision: bf16 needs no loss scaling, fp16 does; a no-op on fp32.
        autocast=torch.autocast(
            device.type,
            dtype=torch.float16 if precision == "16-mixed" else torch.bfloat16,
            enabled=precision != "32",
        ),
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "16-mixed"),
        metrics=build_metrics(meta).to(device),
        state=State(),
        loss_sum=torch.zeros((), device=device),
        loss_count=torch.zeros((), device=device),
        perfect=perfect_score(meta),
    )
    if checkpoint is not None:
        restore(run, checkpoint, path)
    if t.compile:
        model.compile()  # in place: the checkpoint's keys stay those of the model
{% if sharding %}
    run.net = model if t.strategy == "fsdp" else wrap(model, world_size, device)
{% else %}
    run.net = wrap(model, world_size, device)
{% endif %}
    return run


def restore(run: Run, checkpoint: dict[str, Any], path: str | Path | None = None) -> None:
    """Continue from a checkpoint: weights, optimizer, schedule, place, random state."""
{% if sharding %}
    if run.cfg.train.strategy == "fsdp":  # its weights went in before sharding
        load_optimizer_state(run.model, run.optimizer, checkpoint["optimizer"])
    else:
        load_weights(run.model, checkpoint["model"], path)
        run.optimizer.load_state_dict(checkpoint["optimizer"])
{% else %}
    load_weights(run.model, checkpoint["model"], path)
    run.optimizer.load_state_dict(checkpoint["optimizer"])
{% endif %}
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    progress = checkpoint["progress"]
    run.state = State(
        **{key: progress[key] for key in ("step", "epoch", "best", "last", "bad_evals")}
    )
    run.loss_sum.fill_(checkpoint["loss"][0])
    run.loss_count.fill_(checkpoint["loss"][1])
    run.train_loader.load_state_dict(checkpoint["loader"])
    set_rng_state(checkpoint["rng"])
    saved = checkpoint["hyper_parameters"]["cfg"]["train"]
    continue_schedule(run.optimizer, run.scheduler, run.cfg, saved, run.state.step)


def start_reporting(run: Run, checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """Rank 0: the run folder, the record of what produced it, metrics.csv and the tracker;
    returns the trivial baseline, which it saves too."""
    prepare_run_dir(run.run_dir, run.cfg)
    run.record = write_record(run.run_dir, resumed=checkpoint is not None)
    resumed_step = checkpoint["progress"]["step"] if checkpoint else None
    run_id = checkpoint.get("tracker_run_id") if checkpoint else None
    run.log = MetricsLog(run.run_dir, run.cfg, resumed_step, run_id, run.record)
    run.progress = Progress(run.state.step, run.cfg.train.max_steps)
    parameters = sum(p.numel() for p in run.model.parameters())
    show(f"{type(run.model).__name__}: {parameters:,} parameters")
    baseline = measure_baseline(run.val_loader.dataset, run.meta, run.cfg)
    save_baseline(run.run_dir, baseline)
    return baseline


def stop_reporting(run: Run, error: BaseException | None = None) -> None:
    """Rank 0: curves.png, then the tracker's run ends (with the run's files)."""
    if run.progress is not None:
        run.progress.close()
    if run.log is None:
        return
    try:
        if not getattr(error, "at_once", False):  # a second Ctrl-C: no time for a plot
            plot_learning_curves(run.run_dir)
    except Exception:
        if error is None:
            raise  # else the run's own error is the one to report
    run.log.close(run.state.best, error)


# --- the loop ----------------------------------------------------------------------------


def fit(run: Run, signals: StopSignals, trial: Any = None) -> str:
    """Train until the budget is spent, the epoch cap is reached, or early stopping; returns
    which of them ended the run."""
    t, state, loader = run.cfg.train, run.state, run.train_loader
    batches = every_batch(loader, state)
    run.net.train()
    for number in range(state.step + 1, t.max_steps + 1):
        loss = train_step(run, next_micro_batches(batches, loader, t.accumulate))
        state.step = number
        if run.progress is not None:
            run.progress.update(number, state.epoch + 1, loss)

        seen = state.epoch * len(loader) + loader.served  # batches, over every epoch
        evaluated = evaluation_due(run.cfg, seen, len(loader), number)
        if evaluated:
            stop = evaluate(run, trial)
            if stop:
                return stop
        # After the step's evaluation, if it has one: a resumed run then misses none.
        (stop_asked,) = any_rank(signals.received, world_size=run.world_size, device=run.device)
        if stop_asked and number < t.max_steps:
            if not evaluated:
                check_finite(run.model, number, run.lr)
                save(run, "last.ckpt")
            raise Interrupted(signals.received, number)
        epoch_done = loader.served == len(loader)
        if t.epochs and state.epoch + 1 >= t.epochs and epoch_done and number < t.max_steps:
            return "epochs"
    return "max_steps"


def every_batch(loader, state: State) -> Iterator[Any]:
    """The loader's batches, epoch after epoch, reshuffled each time; state.epoch counts."""
    while True:
        loader.sampler.set_epoch(state.epoch)  # a new shuffle each epoch, the same on each rank
        yield from loader
        state.epoch += 1


def next_micro_batches(batches: Iterator[Any], loader, accumulate: int) -> list[Any]:
    """The micro-batches of the next optimizer step: `accumulate`, fewer at an epoch's end."""
    taken = [next(batches)]
    while len(taken) < accumulate and loader.served < len(loader):
        taken.append(next(batches))
    return taken


def train_step(run: Run, micro_batches: list[Any]) -> torch.Tensor:
    """One optimizer step over the micro-batches; returns their mean loss."""
    t = run.cfg.train
    losses = []
    for i, batch in enumerate(micro_batches):
        # DDP all-reduces the gradients on the last micro-batch of the step only.
        last = i == len(micro_batches) - 1
        syncing = run.world_size == 1 or last
{% if sharding %}
        with contextlib.nullcontext() if syncing else no_sync(run.net):
{% else %}
        with contextlib.nullcontext() if syncing else run.net.no_sync():
{% endif %}
            with run.autocast:
                loss, _, _ = step(run.net, to_device(batch, run.device))
            (diverged,) = any_rank(
                not torch.isfinite(loss), world_size=run.world_size, device=run.device
            )
            if diverged:  # before it reaches the weights, and before anything is saved
                raise Diverged(run.state.step + 1, loss.item(), run.lr)
            run.scaler.scale(loss / t.accumulate).backward()
        losses.append(loss.detach())
    if t.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        # In the optimizer's order: the order of the norm's sum decides its last bits.
        parameters = [p for group in run.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, t.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    for loss in losses:
        run.loss_sum += loss.float()
    run.loss_count += len(losses)
    return sum(losses) / len(losses)


def evaluate(run: Run, trial: Any = None) -> str | None:
    """Evaluate; then log a row and write last.ckpt, and best.ckpt when it is better.
    Returns why early stopping ends the run, if it does."""
    state = run.state
    scores = evaluate_model(run.model, run.val_loader, run.metrics, run.device, run.autocast)
    if not math.isfinite(scores["val/loss"]):  # the last step broke the weights
        raise Diverged(state.step, scores["val/loss"], run.lr, "validation loss")
    check_finite(run.model, state.step, run.lr)
    train_loss = mean_over_ranks(run.loss_sum / run.loss_count.clamp(min=1), run.world_size)
    run.loss_sum.zero_()
    run.loss_count.zero_()
    row = {"step": state.step, "epoch": state.epoch + 1, "lr": run.lr}
    row |= {"train/loss": train_loss.item(), **scores}
    stop = state.add(row, run.cfg, run.perfect)
{% if sharding %}
    if run.log is not None:
        # The row first: a row later than the checkpoint is dropped on resume.
        run.log.write(row, best=state.improved)
    # Every process, since FSDP gathers the checkpoint's weights from all; rank 0 writes.
    save(run, "last.ckpt", "best.ckpt" if state.improved else None)
{% else %}
    if run.log is not None:
        # The row first: a row later than the checkpoint is dropped on resume.
        run.log.write(row, best=state.improved)
        save(run, "last.ckpt", "best.ckpt" if state.improved else None)
{% endif %}
    if trial is not None:
        trial.report(row[MONITOR], state.step)  # an Optuna sweep may prune this trial
        if trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"pruned at step {state.step}")
    return stop


def save(run: Run, *names: str | None) -> None:
    """Rank 0 writes the checkpoint under each of these names in checkpoints/."""
{% if sharding %}
    weights, optimizer = whole_state(run.model, run.optimizer)  # every process takes part
{% endif %}
    if run.rank != 0:
        return
    checkpoint = {
        "task": TASK,
        "engine": ENGINE,
        "hyper_parameters": {"cfg": run.cfg.to_dict(), "meta": run.meta},
{% if sharding %}
        "model": weights,
        "optimizer": optimizer,
{% else %}
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
{% endif %}
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "progress": asdict(run.state) | {"epoch": run.train_loader.state_dict()["epoch"]},
        "loss": [run.loss_sum.item(), run.loss_count.item()],
        "loader": run.train_loader.state_dict(),
        "rng": get_rng_state(),
        "tracker_run_id": run.log.tracker.run_id if run.log else None,
        "record": run.record,
    }
    first, *others = [run.run_dir / "checkpoints" / name for name in names if name]
    save_atomically(checkpoint, first)
    for path in others:  # the same checkpoint: a link to the first, no second write
        save_copy(first, path)


def leave(run: Run) -> None:
    """The ranks leave together, DDP's reducer freed while the process group exists: freed
    at exit, after the group, it can abort the process ("terminate called without an active
    exception"), turning a finished run into a failed one."""
    dist.barrier()
    run.net = run.model
    gc.collect()
