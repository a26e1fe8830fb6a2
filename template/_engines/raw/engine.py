"""The training engine: one plain PyTorch loop, readable top to bottom.

`train` runs on one device, or on several under torchrun with DistributedDataParallel:
`--devices N` relaunches itself through torchrun, and a multi-node job starts torchrun on
each node (see README.md). Rank 0 alone prints, logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import math
import os
import random
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics import MeanMetric, MetricCollection
from tqdm import tqdm

from .config import (
    RUN_NAME_ENV,
    TASK,
    Config,
    UserError,
    check_same_model,
    load_config,
    loader_processes,
    new_run_name,
    read_checkpoint,
    resolve_device,
    resolve_devices,
    resolve_precision,
    save_config,
)
from .data import build_datasets, load_dataset
from .model import MONITOR, MONITOR_MODE, build_metrics, build_model, compute_loss

ENGINE = "raw"


def train(cfg: Config, resume: str | Path | None = None) -> dict[str, float] | None:
    """Train and validate each epoch, writing the run folder; resume from a checkpoint.

    Returns the last epoch's metrics on rank 0, None on the other ranks (and in the
    parent of a `--devices N` launch, whose workers report instead).
    """
    t = cfg.train
    device = resolve_device(t.accelerator)
    nprocs = resolve_devices(t.devices, device)
    if "RANK" not in os.environ and nprocs > 1:
        return launch_workers(cfg, resume, nprocs)
    rank, world_size, device = setup_distributed(device)
    master = rank == 0
    try:
        checkpoint = read_checkpoint(resume) if resume else None
        if checkpoint is not None:
            check_same_model(checkpoint, cfg, Path(resume))
        run_dir = claim_run_dir(cfg, resume, world_size)
        # Every rank starts from the same seed, so the models start identical.
        seed_everything(t.seed)
        train_set, val_set, meta = build_datasets(cfg, checkpoint["meta"] if checkpoint else None)
        train_loader = make_loader(train_set, cfg, rank, world_size, device, train=True)
        val_loader = make_loader(val_set, cfg, rank, world_size, device, train=False)

        model = build_model(cfg, meta).to(device)
        if master:
            parameters = sum(p.numel() for p in model.parameters())
            print(f"{type(model).__name__}: {parameters:,} parameters", flush=True)
        steps_per_epoch = max(1, len(train_loader) // t.accumulate)
        total_steps = t.epochs * steps_per_epoch
        warmup_steps = int(t.warmup_ratio * total_steps)
        # Fused AdamW is one kernel per step instead of one per parameter, on CUDA only.
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=t.lr,
            weight_decay=t.weight_decay,
            fused=device.type == "cuda",
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
        )
        precision = resolve_precision(t.precision, device)
        # Mixed precision: bf16 needs no loss scaling, fp16 does; a no-op on fp32.
        autocast = torch.autocast(
            device.type,
            dtype=torch.float16 if precision == "16-mixed" else torch.bfloat16,
            enabled=precision != "32",
        )
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")

        state = {"epoch": 0, "step": 0, "best": None, "bad_epochs": 0}
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            scaler.load_state_dict(checkpoint["scaler"])
            state.update(checkpoint["state"])
            set_rng_state(checkpoint["rng"])
            if t.patience and state["bad_epochs"] >= t.patience:
                raise UserError(
                    f"{run_dir} stopped early ({MONITOR} did not improve for "
                    f"{t.patience} epochs); to train on, resume with --set train.patience=0"
                )
            if state["epoch"] >= t.epochs:
                raise UserError(
                    f"{run_dir} has trained its {t.epochs} epochs already; "
                    "pass --epochs with a larger number to train on"
                )

        if t.compile:
            model.compile()  # in place: the checkpoint's keys stay those of the plain model
        net = model
        if world_size > 1:
            net = DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None
            )

        log = MetricsLog(run_dir, cfg, resumed_epoch=state["epoch"]) if master else None
        metrics = build_metrics(meta).to(device)
        val_loss = MeanMetric().to(device)
        row: dict[str, float] = {}
        for epoch in range(state["epoch"], t.epochs):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, same on every rank
            net.train()
            optimizer.zero_grad(set_to_none=True)
            train_loss = MeanMetric().to(device)
            batches = tqdm(
                train_loader,
                desc=f"epoch {epoch + 1}/{t.epochs}",
                disable=not (master and sys.stderr.isatty()),
                leave=False,
            )
            for i, (inputs, targets) in enumerate(batches):
                inputs = inputs.to(device, non_blocking=True)
                targets = targets.to(device, non_blocking=True)
                last_micro_step = (i + 1) % t.accumulate == 0
                # Gradients are all-reduced only on the last micro-step of an accumulation.
                sync = (
                    net.no_sync()
                    if world_size > 1 and not last_micro_step
                    else contextlib.nullcontext()
                )
                with sync:
                    with autocast:
                        loss = compute_loss(net(inputs), targets)
                    scaler.scale(loss / t.accumulate).backward()
                train_loss.update(loss.detach(), weight=len(targets))
                if not last_micro_step:
                    continue
                if t.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state["step"] += 1
                batches.set_postfix(loss=f"{loss.item():.4f}")

            row = {
                "epoch": epoch,  # counted from 0, as Lightning does
                "step": state["step"],
                "lr": scheduler.get_last_lr()[0],
                "train/loss": train_loss.compute().item(),  # averaged over all ranks
                **evaluate_model(model, val_loader, metrics, val_loss, device, autocast),
            }
            state["epoch"] = epoch + 1
            improved = state["best"] is None or (
                row[MONITOR] > state["best"]
                if MONITOR_MODE == "max"
                else row[MONITOR] < state["best"]
            )
            if improved:
                state["best"], state["bad_epochs"] = row[MONITOR], 0
            else:
                state["bad_epochs"] += 1
            if master:
                # The metrics first: a row past the checkpoint is dropped on resume.
                log.write(row, t.epochs)
                checkpoint = {
                    "task": TASK,
                    "engine": ENGINE,
                    "config": cfg.to_dict(),
                    "meta": meta,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "state": dict(state),
                    "rng": get_rng_state(),
                }
                save_checkpoint(checkpoint, run_dir / "checkpoints" / "last.ckpt")
                if improved:
                    save_checkpoint(checkpoint, run_dir / "checkpoints" / "best.ckpt")
            if t.patience and state["bad_epochs"] >= t.patience:
                if master:
                    print(f"early stopping: {MONITOR} has not improved for {t.patience} epochs")
                break
        if log is not None:
            log.close()
        if world_size > 1:
            dist.barrier()  # leave together
            # Free DDP's reducer now, while the process group exists: freed at exit, after
            # the group, it can abort the process ("terminate called without an active
            # exception"), turning a finished run into a failed one.
            del net
            gc.collect()
        return row if master else None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def evaluate_model(
    model: torch.nn.Module,
    loader: DataLoader,
    metrics: MetricCollection,
    val_loss: MeanMetric,
    device: torch.device,
    autocast: contextlib.AbstractContextManager,
) -> dict[str, float]:
    """The validation loss and metrics over the whole loader, reduced over all ranks."""
    model.eval()
    metrics.reset()
    val_loss.reset()
    with torch.no_grad():
        for inputs, targets in loader:
            inputs = inputs.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            with autocast:
                outputs = model(inputs)
            outputs = outputs.float()
            val_loss.update(compute_loss(outputs, targets), weight=len(targets))
            metrics.update(outputs, targets)
    results = {"val/loss": val_loss.compute().item()}
    results.update({f"val/{k}": v.item() for k, v in metrics.compute().items()})
    return results


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
    metrics = build_metrics(meta).to(device)
    val_loss = MeanMetric().to(device)
    no_autocast = contextlib.nullcontext()
    return evaluate_model(model.to(device), loader, metrics, val_loss, device, no_autocast)


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


# --- helpers ---------------------------------------------------------------------------


def make_loader(
    dataset: Dataset,
    cfg: Config,
    rank: int,
    world_size: int,
    device: torch.device,
    train: bool,
) -> DataLoader:
    """A loader over this rank's share of the data, shuffled per epoch when training."""
    sampler = DistributedSampler(
        dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=cfg.train.seed
    )
    return DataLoader(
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


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to a tenth."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device); under torchrun, joins the process group first."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
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
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def claim_run_dir(cfg: Config, resume: str | Path | None, world_size: int) -> Path:
    """The run folder: the checkpoint's when resuming, else a new one named on rank 0."""
    if resume:
        run_dir = Path(resume).resolve().parent.parent
        cfg.train.output_dir, cfg.train.name = str(run_dir.parent), run_dir.name
        return run_dir
    cfg.train.name = cfg.train.name or new_run_name()
    claim = [cfg.train.name, cfg.run_dir.exists()]
    if world_size > 1:
        dist.broadcast_object_list(claim, src=0)  # rank 0's name and finding hold
    cfg.train.name, taken = claim
    if taken:
        raise UserError(
            f"run folder {cfg.run_dir} exists already; pick another --name, "
            "or continue it with --resume last"
        )
    return cfg.run_dir


def launch_workers(cfg: Config, resume: str | Path | None, nprocs: int) -> None:
    """Run this same command again in `nprocs` processes on this node, through torchrun."""
    from torch.distributed.run import main as torchrun

    run_dir = claim_run_dir(cfg, resume, world_size=1)
    os.environ[RUN_NAME_ENV] = run_dir.name  # the workers write into this run folder
    # Share the cores among the workers (torchrun would warn and give each one thread).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
    package = __name__.rpartition(".")[0]
    try:
        torchrun(["--standalone", f"--nproc-per-node={nprocs}", "-m", package, *sys.argv[1:]])
    finally:
        del os.environ[RUN_NAME_ENV]


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


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Write to a temporary file, then rename: a crash never leaves a broken checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


class MetricsLog:
    """One row per epoch in metrics.csv (and TensorBoard when configured), on rank 0."""

    def __init__(self, run_dir: Path, cfg: Config, resumed_epoch: int):
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        self.path = run_dir / "metrics.csv"
        rows = []
        if resumed_epoch and self.path.is_file():
            # Keep the epochs the checkpoint has; later ones are trained again.
            with self.path.open(newline="") as file:
                rows = [r for r in csv.DictReader(file) if int(r["epoch"]) < resumed_epoch]
        self.rows = rows
        self.writer = None
        if cfg.train.logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(run_dir / "tensorboard")

    def write(self, row: dict[str, float], epochs: int) -> None:
        self.rows.append(row)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, self.path)
        if self.writer is not None:
            for key, value in row.items():
                if key not in ("epoch", "step"):
                    self.writer.add_scalar(key, value, row["step"])
        values = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "step"))
        print(f"epoch {row['epoch'] + 1}/{epochs}  step {row['step']}  {values}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
