"""The training engine: one plain PyTorch loop, readable top to bottom.

Training length is a budget of optimizer steps (train.max_steps). Every eval_every steps,
and at least once an epoch, the loop evaluates, writes a row of metrics.csv and last.ckpt,
and best.ckpt when the monitored metric improved; after `patience` evaluations without
improvement it stops early. A checkpoint holds all it takes to continue exactly: weights,
optimizer, schedule, random state and the loader's place in its epoch.

`train` runs on one device, or on several under torchrun with DistributedDataParallel:
`--devices N` relaunches itself through torchrun, and a multi-node job starts torchrun on
each node (see README.md). Rank 0 alone prints, logs and writes files.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import gc
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torchmetrics import MeanMetric

from .config import TASK, Config, UserError, load_config
from .data import build_datasets, load_dataset
from .hardware import resolve_device, resolve_devices, resolve_precision
from .model import (
    BASELINE,
    MONITOR,
    MONITOR_MODE,
    build_baseline,
    build_metrics,
    build_model,
    step,
)
from .record import write_record
from .runs import (
    RUN_NAME_ENV,
    check_resumable,
    choose_run_dir,
    prepare_run_dir,
    read_checkpoint,
    save_atomically,
)
from .tracking import MetricsLog, Progress, describe, save_baseline
from .training import (
    Diverged,
    Interrupted,
    Outcome,
    StopSignals,
    build_optimizer,
    eval_interval,
    evaluate_model,
    get_rng_state,
    improved,
    make_loader,
    seed_everything,
    set_rng_state,
    to_device,
)

ENGINE = "raw"


def train(cfg: Config, resume: str | Path | None = None, trial: Any = None) -> Outcome | None:
    """Train to the step budget, evaluating and checkpointing as it goes; resume from a
    checkpoint. Returns the outcome on rank 0, None on the other ranks (and in the parent
    of a `--devices N` launch, whose workers report instead).
    """
    device = resolve_device(cfg.train.accelerator)
    nprocs = resolve_devices(cfg.train.devices, device)
    if "RANK" not in os.environ and nprocs > 1:
        return launch_workers(cfg, resume, nprocs)
    rank, world_size, device = setup_distributed(device)
    loop = Loop(cfg, resume, rank, world_size, device)
    with StopSignals() as signals:
        try:
            outcome = loop.run(signals, trial)
        except BaseException as error:  # the tracker's run ends as failed or killed
            loop.close(error)
            raise
    loop.close()
    return outcome


@dataclass
class State:
    """How far the run is: optimizer steps, the epoch in progress, the evaluations."""

    step: int = 0
    epoch: int = 0  # counted from 0 here; printed and logged from 1
    best: dict[str, float] = field(default_factory=dict)  # the best evaluation's row
    last: dict[str, float] = field(default_factory=dict)  # the latest evaluation's row
    bad_evals: int = 0  # evaluations since the best one


class Loop:
    """The model, its optimizer and data, and the steps that train them."""

    def __init__(self, cfg: Config, resume: str | Path | None, rank: int, world_size: int, device):
        t = cfg.train
        self.cfg, self.device, self.world_size, self.master = cfg, device, world_size, rank == 0
        checkpoint = read_checkpoint(resume) if resume else None
        if checkpoint is not None:
            check_resumable(checkpoint, cfg, resume, ENGINE, progress_of)
        self.run_dir, continuing = claim_run_dir(cfg, resume, world_size)
        seed_everything(t.seed)  # every rank starts from the same seed, hence the same model

        train_set, val_set, self.meta = build_datasets(cfg, checkpoint and checkpoint["meta"])
        self.train_loader = make_loader(train_set, cfg, rank, world_size, device, train=True)
        self.val_loader = make_loader(val_set, cfg, rank, world_size, device, train=False)
        self.model = build_model(cfg, self.meta).to(device)
        self.optimizer, self.scheduler = build_optimizer(self.model, cfg, device)
        precision = resolve_precision(t.precision, device)
        # Mixed precision: bf16 needs no loss scaling, fp16 does; a no-op on fp32.
        self.autocast = torch.autocast(
            device.type,
            dtype=torch.float16 if precision == "16-mixed" else torch.bfloat16,
            enabled=precision != "32",
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
        self.metrics = build_metrics(self.meta).to(device)
        self.train_loss = MeanMetric().to(device)  # since the last evaluation; saved
        self.train_loss.persistent(True)
        self.state = State()
        if checkpoint is not None:
            self.restore(checkpoint)
        if t.compile:
            self.model.compile()  # in place: the checkpoint's keys stay those of the model
        self.net = self.model
        if world_size > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)

        self.log, self.progress = None, Progress(self.state.step, t.max_steps, self.master)
        self.record = None  # what produced the run, in short; checkpoints carry it
        if self.master:
            prepare_run_dir(self.run_dir, cfg)
            self.record = write_record(self.run_dir, continuing)
            resumed_step = self.state.step if continuing else None
            # A continued run logs into its tracker run of before.
            run_id = checkpoint and checkpoint.get("tracker_run_id")
            self.log = MetricsLog(self.run_dir, cfg, resumed_step, run_id)
            parameters = sum(p.numel() for p in self.model.parameters())
            self.progress.print(f"{type(self.model).__name__}: {parameters:,} parameters")
        # What a model that learned nothing scores on the validation split.
        baseline = build_baseline(self.meta).to(device)
        self.baseline = {
            "name": BASELINE,
            **evaluate_model(baseline, self.val_loader, self.metrics, device),
        }
        if self.master:
            save_baseline(self.run_dir, self.baseline)

    def run(self, signals: StopSignals, trial: Any = None) -> Outcome | None:
        """Train until the budget is spent, the epoch cap is reached, or early stopping."""
        t, state, loader = self.cfg.train, self.state, self.train_loader
        interval = eval_interval(self.cfg, len(loader))
        self.net.train()
        while True:
            loader.sampler.set_epoch(state.epoch)  # a new shuffle each epoch, same on each rank
            for batch in loader:
                stop_asked = self.train_step(batch, signals)
                if stop_asked is None:  # a micro-batch of an accumulation: no step yet
                    continue
                if stop_asked:
                    self.save("last.ckpt")
                    raise Interrupted(signals.received, state.step)
                batches = state.epoch * len(loader) + loader.served
                ends = state.step >= t.max_steps or (
                    t.epochs == state.epoch + 1 and loader.served == len(loader)
                )
                if (batches % interval == 0 or ends) and self.evaluate(trial):
                    return self.outcome("early_stopping")
                if state.step >= t.max_steps:
                    return self.outcome("max_steps")
            state.epoch += 1
            if t.epochs and state.epoch >= t.epochs:
                return self.outcome("epochs")

    def train_step(self, batch, signals: StopSignals) -> bool | None:
        """Forward and backward one micro-batch, and step the optimizer on the last one of
        an accumulation (or of the epoch). Returns None when it did not step, else whether
        a signal asks to stop."""
        t, state, served = self.cfg.train, self.state, self.train_loader.served
        batch = to_device(batch, self.device)
        stepping = served % t.accumulate == 0 or served == len(self.train_loader)
        # Gradients are all-reduced only on the last micro-step of an accumulation.
        no_sync = self.world_size > 1 and not stepping
        with self.net.no_sync() if no_sync else contextlib.nullcontext():
            with self.autocast:
                loss, _, targets = step(self.net, batch)
            diverged, stop_asked = self.agree(not torch.isfinite(loss), signals.received)
            if diverged:  # before it reaches the weights, and before anything is saved
                raise Diverged(state.step + 1, loss.item(), self.lr)
            self.scaler.scale(loss / t.accumulate).backward()
        self.train_loss.update(loss.detach(), weight=len(targets))
        if not stepping:
            return None
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            # In the optimizer's order, as Lightning clips: the same sum, to the last bit.
            parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(parameters, t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        state.step += 1
        self.progress.update(state.step, state.epoch + 1, loss)
        return stop_asked

    def evaluate(self, trial: Any = None) -> bool:
        """Evaluate, then log a row and write last.ckpt (and best.ckpt when it improved).
        Returns whether early stopping ends the run."""
        t, state = self.cfg.train, self.state
        scores = evaluate_model(
            self.model, self.val_loader, self.metrics, self.device, self.autocast
        )
        if not math.isfinite(scores["val/loss"]):  # the last step broke the weights
            raise Diverged(state.step, scores["val/loss"], self.lr, "validation loss")
        row = {
            "step": state.step,
            "epoch": state.epoch + 1,
            "lr": self.lr,
            "train/loss": self.train_loss.compute().item(),  # averaged over all ranks
            **scores,
        }
        self.train_loss.reset()
        state.last = row
        if improved(row[MONITOR], state.best.get(MONITOR), MONITOR_MODE):
            state.best, state.bad_evals = row, 0
        else:
            state.bad_evals += 1
        if self.master:
            # The metrics first: a row later than the checkpoint is dropped on resume.
            self.log.write(row)
            self.progress.print(describe(row, t.max_steps))
            self.save("last.ckpt", "best.ckpt" if state.bad_evals == 0 else None)
        if trial is not None:
            trial.report(row[MONITOR], state.step)  # an Optuna sweep may prune this trial
            if trial.should_prune():
                import optuna

                raise optuna.TrialPruned(f"pruned at step {state.step}")
        return bool(t.patience) and state.bad_evals >= t.patience

    @property
    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def agree(self, *flags: Any) -> list[bool]:
        """Each flag, true when it is true on any rank, so that all ranks act alike."""
        flags = [bool(flag) for flag in flags]
        if self.world_size == 1:
            return flags
        tensor = torch.tensor(flags, dtype=torch.int32, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return [bool(flag) for flag in tensor.tolist()]

    def save(self, *names: str | None) -> None:
        if not self.master:
            return
        checkpoint = {
            "task": TASK,
            "engine": ENGINE,
            "config": self.cfg.to_dict(),
            "meta": self.meta,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "state": dataclasses.asdict(self.state),
            "train_loss": self.train_loss.state_dict(),
            "loader": self.train_loader.state_dict(),
            "rng": get_rng_state(),
            "tracker_run_id": self.log.tracker.run_id,
            "record": self.record,
        }
        for name in filter(None, names):
            save_atomically(checkpoint, self.run_dir / "checkpoints" / name)

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Continue from a checkpoint: weights, optimizer, schedule, place, random state."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.train_loss.load_state_dict(checkpoint["train_loss"])
        self.state = State(**checkpoint["state"])
        self.state.epoch = checkpoint["loader"]["epoch"]
        self.train_loader.load_state_dict(checkpoint["loader"])
        set_rng_state(checkpoint["rng"])
        # A larger --max-steps: the rate goes on from where it was (see WarmupCosine).
        self.scheduler.lr_lambdas[0].extend(self.state.step, self.cfg.train.max_steps)

    def outcome(self, reason: str) -> Outcome | None:
        if not self.master:
            return None
        return Outcome(reason, self.state.best, self.state.last, self.baseline)

    def close(self, error: BaseException | None = None) -> None:
        self.progress.close()
        if self.log is not None:
            self.log.close(error)
        if self.world_size > 1 and error is None:
            dist.barrier()  # leave together
            # Free DDP's reducer now, while the process group exists: freed at exit, after
            # the group, it can abort the process ("terminate called without an active
            # exception"), turning a finished run into a failed one.
            del self.net
            gc.collect()


def progress_of(checkpoint: dict[str, Any], patience: int) -> dict[str, Any]:
    """How far a checkpoint's run went: its step, its completed epochs, stopped early."""
    state = checkpoint["state"]
    stopped = bool(patience) and state["bad_evals"] >= patience
    return {"step": state["step"], "epoch": checkpoint["loader"]["epoch"], "stopped": stopped}


def evaluate(
    checkpoint_path: str | Path,
    data: str | Path | None = None,
    accelerator: str = "auto",
) -> dict[str, float]:
    """Metrics of a checkpoint on the validation split it was trained with, or on `data`."""
    model, cfg, meta = load_model(checkpoint_path)
    device = resolve_device(accelerator)
    if data is None:
        _, dataset, _ = build_datasets(cfg, meta)
    else:
        dataset = load_dataset(data, cfg, meta)
    loader = make_loader(dataset, cfg, 0, 1, device, train=False)
    return evaluate_model(model.to(device), loader, build_metrics(meta).to(device), device)


def load_model(checkpoint_path: str | Path) -> tuple[torch.nn.Module, Config, dict]:
    """The trained model (in eval mode, on the CPU), its config and its metadata."""
    checkpoint = read_checkpoint(checkpoint_path)
    if checkpoint.get("engine") != ENGINE:
        raise UserError(
            f"{checkpoint_path} was written by the {checkpoint.get('engine')} engine; "
            "this project trains with plain PyTorch"
        )
    cfg = load_config(base=checkpoint["config"])
    model = build_model(cfg, checkpoint["meta"])
    model.load_state_dict(checkpoint["model"])
    return model.eval(), cfg, checkpoint["meta"]


# --- processes: one, or one per device under torchrun --------------------------------------


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun, joins the process group first."""
    if "RANK" not in os.environ:
        return 0, 1, device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        # Share the cores among the processes of this node instead of oversubscribing.
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # One group for the process, destroyed as it exits: its later runs (the folds of
        # --folds) share it, as a second group in one torchrun job can meet stale addresses.
        atexit.register(dist.destroy_process_group)
    return dist.get_rank(), dist.get_world_size(), device


def claim_run_dir(cfg: Config, resume: str | Path | None, world_size: int) -> tuple[Path, bool]:
    """The run folder, chosen on rank 0 (whose choice and findings every rank takes)."""
    claim: list[Any] = [None, None, None]
    try:
        run_dir, continuing = choose_run_dir(cfg, resume)
        claim = [str(run_dir), continuing, None]
    except UserError as error:
        claim[2] = str(error)
    if world_size > 1:
        dist.broadcast_object_list(claim, src=0)
    if claim[2] is not None:
        raise UserError(claim[2])
    run_dir = Path(claim[0])
    cfg.train.output_dir, cfg.train.name = str(run_dir.parent), run_dir.name
    return run_dir, claim[1]


def launch_workers(cfg: Config, resume: str | Path | None, nprocs: int) -> None:
    """Run this same command again in `nprocs` processes on this node, through torchrun."""
    from torch.distributed.run import main as torchrun

    run_dir, _ = choose_run_dir(cfg, resume)
    os.environ[RUN_NAME_ENV] = run_dir.name  # the workers write into this run folder
    # Share the cores among the workers (torchrun would warn and give each one thread).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    package = __name__.rpartition(".")[0]
    try:
        torchrun(["--standalone", f"--nproc-per-node={nprocs}", "-m", package, *sys.argv[1:]])
    finally:
        del os.environ[RUN_NAME_ENV]
