"""How the model trains: one plain PyTorch loop, top to bottom.

This file is what PyTorch Lightning does for you in the other style (`scaffold update
--framework lightning` swaps it for a LightningModule and a Trainer): processes and devices,
the data loaders, mixed precision, gradient accumulation and clipping, evaluations,
metrics.csv and the progress bar, last.ckpt and best.ckpt, early stopping, resuming exactly
where a run stopped, and Ctrl-C or SIGTERM. Each part names the piece of Lightning it stands
for. The model, its loss, metrics and optimizer come from model.py and the data from
data.py, which both styles share.

On several devices (`--devices N`) the command starts again under torchrun, a process per
device, and the model is wrapped in DistributedDataParallel; process 0 writes the files.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import os
import random
import signal
{% if "slurm" in extras %}
import subprocess
{% endif %}
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .config import Config
from .model import MONITOR, MONITOR_MODE, build_metrics, build_model, build_optimizer, step
from .plumbing import Diverged, Interrupted, runs
from .plumbing.reporting import rows_before
{% if logger != "csv" %}
from .plumbing.tracker import open_tracker
{% endif %}
from .plumbing.training import make_loader, random_state, set_random_state, stretch_schedule

ENGINE = "raw"
{% if "sweeps" in extras %}
# A sweep's: called with (step, monitored value) after each evaluation; True stops the run.
ON_EVALUATION = None
{% endif %}


def fit(cfg: Config, run_dir: Path, datasets: tuple, checkpoint_path=None, checkpoint=None) -> str:
    """Train on (training set, validation set, metadata) to the step budget or until early
    stopping, from a checkpoint when given; returns which of the two ended the run."""
    t, (train_set, val_set, meta) = cfg.train, datasets

    # --- processes and devices (Lightning: Trainer(accelerator, devices, strategy="ddp")) ----
    device = resolve_device(t.accelerator)
    per_node = torch.cuda.device_count() if t.devices == -1 else t.devices  # -1: every GPU
    if per_node * t.num_nodes > 1 and "RANK" not in os.environ:
        relaunch_under_torchrun(per_node, t.num_nodes)
    rank, world_size = 0, 1
    if "RANK" in os.environ:  # started by torchrun, which says where the others are
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
    master = rank == 0  # the process that writes the files
    # Lightning: seed_everything. The same seed on every process: the same first weights.
    random.seed(t.seed)
    torch.manual_seed(t.seed)

    # --- data loaders (Lightning: the DataModule's), the model and its optimizer ---------------
    pin = device.type == "cuda"  # page-locked memory, for copies to the GPU that do not wait
    train_loader, val_loader = (
        make_loader(dataset, t.batch_size, t.seed, shuffle, rank, world_size, t.num_workers, pin)
        for dataset, shuffle in ((train_set, True), (val_set, False))
    )
    model = build_model(cfg, meta).to(device)
    optimizer, scheduler = build_optimizer(model, cfg)
    metrics = build_metrics(meta).to(device)

    # --- mixed precision (Lightning: Trainer(precision=...)) ----------------------------------
    # bf16 needs no loss scaling, fp16 does; in 32 bits both do nothing.
    half = torch.float16 if t.precision == "16-mixed" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=half, enabled=t.precision != "32")
    scaler = torch.amp.GradScaler(device.type, enabled=t.precision == "16-mixed")

    # --- where the run stands: at the start, or a checkpoint's step (Lightning: ckpt_path) ----
    step_count, epoch, batches_seen, best, bad_evals = 0, 0, 0, None, 0
    loss_sum, loss_count = torch.zeros((), device=device), 0  # since the last evaluation
    if checkpoint is not None:
        model.load_state_dict(runs.model_weights(checkpoint))
        optimizer.load_state_dict(checkpoint["optimizer_states"][0])
        schedule, saved = checkpoint["lr_schedulers"][0], checkpoint["hyper_parameters"]["cfg"]
        stretch_schedule(schedule, t.max_steps - saved["train"]["max_steps"])  # a larger budget
        scheduler.load_state_dict(schedule)
        if checkpoint["scaler"]:  # empty when the run had no float16 (--precision changed)
            scaler.load_state_dict(checkpoint["scaler"])
        train_loader.load_state_dict(checkpoint["loader"])  # its place in the epoch
        step_count, epoch = checkpoint["global_step"], checkpoint["epoch"]
        batches_seen, (best, bad_evals) = checkpoint["batches"], checkpoint["early_stopping"]
        loss_sum.fill_(checkpoint["train_loss"][0])
        loss_count = checkpoint["train_loss"][1]
        set_random_state(checkpoint["random_state"])  # dropout's and augmentation's
    if t.compile:
        model.compile()  # in place: the checkpoint's names stay the plain model's
    net = DistributedDataParallel(model) if world_size > 1 else model

    # --- what a run shows (Lightning: its ModelSummary, sanity check, CSVLogger, progress bar)
    if master:
        parameters = sum(p.numel() for p in model.parameters())
        print(f"{type(model).__name__}: {parameters:,} parameters, on {device}")
        for name, part in model.named_children():  # what each part of the model holds
            print(
                f"  {name} ({type(part).__name__}): {sum(p.numel() for p in part.parameters()):,}"
            )
        # Two validation batches first: a bug in validation then shows in seconds.
        validate(model, itertools.islice(val_loader, 2), metrics, device, autocast, reduce=False)
        columns = ["epoch", "step", "lr", "train/loss", "val/loss", *(f"val/{k}" for k in metrics)]
        log = MetricsCSV(run_dir / "metrics.csv", columns, checkpoint)
{% if logger != "csv" %}
        tracker = open_tracker(cfg.to_dict(), run_dir)  # {{ logger }}, with the same rows
{% endif %}
    # A bar in a terminal, not in a log file; the line of each evaluation prints above it.
    quiet = not master or not sys.stderr.isatty()
    bar = tqdm(total=t.max_steps, initial=step_count, unit="step", disable=quiet)

    def save(*names: str) -> None:
        """last.ckpt (and best.ckpt, the same file: a link), in Lightning's format: what
        evaluate, predict and export read in both styles (Lightning: ModelCheckpoint)."""
        if not master:
            return
        checkpoint = {
            "state_dict": {f"model.{key}": value for key, value in model.state_dict().items()},
            "hyper_parameters": {"cfg": cfg.to_dict(), "meta": meta},
            "global_step": step_count,
            "epoch": epoch,
            "batches": batches_seen,
            "optimizer_states": [optimizer.state_dict()],
            "lr_schedulers": [scheduler.state_dict()],
            "scaler": scaler.state_dict(),
            "loader": train_loader.state_dict(),
            "early_stopping": [best, bad_evals],
            "train_loss": [loss_sum.item(), loss_count],
            "random_state": random_state(),
        }
        first, *others = [run_dir / "checkpoints" / name for name in names]
        runs.save_atomically(checkpoint, first)
        for path in others:
            with runs.temporary_beside(path) as tmp:
                os.link(first, tmp)

    # --- the loop: an optimizer step every `accumulate` batches, epoch after epoch -----------
    per_epoch = len(train_loader)  # batches
    # Lightning: Trainer(val_check_interval=..., check_val_every_n_epoch=None, log_every_n_steps).
    interval = min(t.eval_every * t.accumulate, per_epoch)  # batches between evaluations
    log_every = min(50, t.eval_every, per_epoch)  # steps between lines of the training loss
    signals = Signals()
    net.train()
    while True:
        train_loader.sampler.set_epoch(epoch)  # each epoch its own order, on every process
        for index, batch in enumerate(train_loader):
            batches_seen += 1
            # Lightning: Trainer(accumulate_grad_batches=...); an epoch's end steps too.
            last_of_step = batches_seen % t.accumulate == 0 or index + 1 == per_epoch
            # DDP averages the gradients over the processes at the step's last batch only.
            with contextlib.nullcontext() if last_of_step or world_size == 1 else net.no_sync():
                with autocast:
                    loss, _, _ = step(net, to_device(batch, device))
                scaler.scale(loss / t.accumulate).backward()
            loss_sum += loss.detach().float()
            loss_count += 1
            if not last_of_step:
                continue
            if t.grad_clip:  # Lightning: Trainer(gradient_clip_val=...)
                scaler.unscale_(optimizer)
                # In the optimizer's order, as Lightning: the norm's sum then ends alike.
                clipped = [p for group in optimizer.param_groups for p in group["params"]]
                torch.nn.utils.clip_grad_norm_(clipped, t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step_count += 1
            bar.update()

            # --- every eval_every steps, and at the end: evaluate, log, save, stop early? -----
            evaluating = batches_seen % interval == 0 or step_count >= t.max_steps
            lr = scheduler.get_last_lr()[0]
            if master and step_count % log_every == 0 and not evaluating:
                log.write(
                    {"epoch": epoch, "step": step_count, "lr": lr, "train/loss": loss.item()}
                )
            if evaluating:
                scores = validate(model, val_loader, metrics, device, autocast)
                if not torch.isfinite(torch.tensor(scores["val/loss"])):
                    raise Diverged(step_count, run_dir)  # before this model is saved anywhere
                train_loss = loss_sum / loss_count
                if world_size > 1:
                    dist.all_reduce(train_loss, op=dist.ReduceOp.AVG)
                loss_sum.zero_()
                loss_count = 0
                row = {"epoch": epoch, "step": step_count, "lr": lr}
                row |= {"train/loss": train_loss.item(), **scores}
                # Lightning: ModelCheckpoint(monitor=...) and EarlyStopping(patience=...).
                value, higher = scores[MONITOR], MONITOR_MODE == "max"
                improved = best is None or (value > best if higher else value < best)
                best, bad_evals = (value, 0) if improved else (best, bad_evals + 1)
                threshold = t.stopping_threshold  # a value past it ends the run at once
                reached = threshold is not None and (
                    value > threshold if higher else value < threshold
                )
                reached |= not math.isfinite(value)  # as Lightning's check_finite does
                if master:
                    log.write(row)  # before the checkpoint: a resume drops the rows after it
{% if logger != "csv" %}
                    tracker.log_metrics(row, step_count)
{% endif %}
                    bar.write("  ".join(f"{key} {value:.4g}" for key, value in row.items()))
                    bar.set_postfix({"loss": f"{row['train/loss']:.4f}", MONITOR: f"{value:.4f}"})
                save("last.ckpt", *(["best.ckpt"] if improved else []))
{% if "sweeps" in extras %}
                if ON_EVALUATION is not None and ON_EVALUATION(step_count, value):
                    return finish(bar, "pruned")
{% endif %}
                if (t.patience and bad_evals >= t.patience) or reached:
                    return finish(bar, "early_stopping")
            if step_count >= t.max_steps:
                return finish(bar, "max_steps")
            # Lightning: its SIGTERM handling. After the step (and its evaluation), never mid-way.
            if signals.any_received(world_size, device):
                if not evaluating:
                    save("last.ckpt")
                bar.close()
                received = signals.received or signal.SIGTERM  # here, or in another process
{% if "slurm" in extras %}
                if received == signal.SIGUSR1 and master:  # SLURM's, before its time limit
                    subprocess.run(["scontrol", "requeue", os.environ["SLURM_JOB_ID"]])
{% endif %}
                raise Interrupted(received, run_dir / "checkpoints" / "last.ckpt")
        epoch += 1


@torch.no_grad()
def validate(model, loader, metrics, device, autocast=None, reduce=True) -> dict[str, float]:
    """The validation loss and metrics of `model` over the loader, reduced over every
    process of a distributed run unless reduce=False (Lightning: its validation loop)."""
    was_training = model.training
    model.eval()
    metrics.reset()
    total = torch.zeros(2, device=device)  # the loss summed over the examples, and their count
    for batch in loader:
        with autocast or contextlib.nullcontext():
            loss, outputs, targets = step(model, to_device(batch, device))
        total[0] += loss.float() * len(targets)
        total[1] += len(targets)
        metrics.update(outputs.float(), targets)
    reduce = reduce and dist.is_initialized()
    for metric in metrics.values():  # torchmetrics reduces over the processes when DDP is on
        metric.distributed_available_fn = lambda: reduce
    if reduce:
        dist.all_reduce(total)
    model.train(was_training)
    scores = {f"val/{key}": value.item() for key, value in metrics.compute().items()}
    return {"val/loss": (total[0] / total[1]).item(), **scores}


def evaluate(model, dataset, cfg: Config, meta: dict, accelerator: str = "cpu") -> dict:
    """The loss and metrics of `model` on `dataset`, in this process alone."""
    device = resolve_device(accelerator)
    loader = make_loader(dataset, cfg.train.batch_size, cfg.train.seed, shuffle=False)
    return validate(model.to(device), loader, build_metrics(meta).to(device), device, reduce=False)


def resolve_device(accelerator: str) -> torch.device:
    """The device for --accelerator (auto: a GPU, else Apple's MPS, else the CPU)."""
    if accelerator == "auto":
        mps = torch.backends.mps.is_available()
        accelerator = "gpu" if torch.cuda.is_available() else "mps" if mps else "cpu"
    if accelerator == "gpu":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on the GPUs that have them
    return torch.device("cuda" if accelerator == "gpu" else accelerator)


def to_device(batch, device: torch.device):
    """A batch (tensors, or tuples, lists and dicts of them) on `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(value, device) for value in batch)
    return batch


def finish(bar: tqdm, reason: str) -> str:
    """Close the progress bar and the processes' group; the reason the run ended."""
    bar.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return reason


class MetricsCSV:
    """metrics.csv: a row every few steps and at each evaluation (Lightning: CSVLogger). A
    resumed run keeps the rows up to its checkpoint's step (a later one was written after
    it, and comes again)."""

    def __init__(self, path: Path, columns: list[str], checkpoint: dict | None):
        self.path, self.columns = path, columns
        with runs.temporary_beside(path) as tmp, tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, columns)
            writer.writeheader()
            writer.writerows(rows_before(path.parent, checkpoint))

    def write(self, row: dict) -> None:
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, self.columns).writerow(row)


class Signals:
    """Ctrl-C and SIGTERM (what SLURM, Kubernetes and spot instances send before a kill)
    stop the run after the current step, with last.ckpt saved; a second Ctrl-C at once."""

    def __init__(self):
        self.received: int | None = None
        signal.signal(signal.SIGTERM, self.handle)
        signal.signal(signal.SIGINT, self.handle)
{% if "slurm" in extras %}
        signal.signal(signal.SIGUSR1, self.handle)  # SLURM's: last.ckpt, then requeue the job
{% endif %}

    def handle(self, signum: int, frame) -> None:
        self.received = signum
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def any_received(self, world_size: int, device: torch.device) -> bool:
        """Whether any process was asked to stop: all of them stop at the same step."""
        if world_size == 1:
            return self.received is not None
        flag = torch.tensor(float(self.received is not None), device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)


def relaunch_under_torchrun(per_node: int, nodes: int) -> None:
    """This same command again, under torchrun: a process per device on this node, which
    meet the other nodes' at MASTER_ADDR:MASTER_PORT (Lightning: its DDP launcher)."""
    where = ["--standalone"]
    if nodes > 1:
        where = [f"--nnodes={nodes}", f"--node-rank={os.environ.get('NODE_RANK', 0)}"]
        where += [f"--master-addr={os.environ.get('MASTER_ADDR', '127.0.0.1')}"]
        where += [f"--master-port={os.environ.get('MASTER_PORT', 29500)}"]
    sys.stdout.flush()
    command = ["-m", "torch.distributed.run", *where, f"--nproc-per-node={per_node}"]
    os.execv(sys.executable, [sys.executable, *command, "-m", runs.PACKAGE, *sys.argv[1:]])
