{% set sharding = backbone == "pretrained" and hardware == "multi-gpu" %}
"""The training engine: PyTorch Lightning's Trainer around the plain model of model.py.

`TaskModule` wraps the model with its optimizer and logs with `self.log`; whatever it logs
(add your own) reaches metrics.csv, a row per evaluation, and the tracker. `train` sets the
Trainer up from the config: max_steps optimizer steps, an evaluation every eval_every steps,
last.ckpt at each evaluation, best.ckpt at each better one, and early stopping.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric

from .config import TASK, Config
from .data import build_datasets
from .model import build_metrics, build_model, step
from .plumbing import lightning_parts as parts
from .plumbing import runs, training
from .plumbing.hardware import global_rank, resolve_device, resolve_devices, resolve_precision
from .plumbing.record import write_record
from .plumbing.reporting import save_baseline, show
from .plumbing.settings import load_config
{% if sharding %}
from .plumbing.sharding import lightning_strategy, shard
{% endif %}
from .plumbing.training import Diverged, Outcome, check_finite, make_loader

ENGINE = "lightning"


class TaskModule(L.LightningModule):
    """The model of model.py with its optimizer, and what it logs."""

    def __init__(self, cfg: dict, meta: dict):
        super().__init__()
        self.save_hyperparameters(logger=False)  # settings and metadata, in every checkpoint
        self.cfg = load_config(base=cfg)
        self.model = build_model(self.cfg, meta)
        self.val_metrics = build_metrics(meta).clone(prefix="val/")
        self.val_loss = MeanMetric(nan_strategy=math.nan)  # a nan stays: a diverged model shows
        # The training loss since the last evaluation, summed on each process (as a buffer,
        # DDP would copy rank 0's to the others), and saved in checkpoints.
        self.loss_sum, self.loss_count = torch.zeros(()), torch.zeros(())
        self.evals = training.Evaluations()
        self.perfect = training.perfect_score(meta)  # the monitored metric's best possible
        self.stop: str | None = None  # why early stopping ended the run
        self.record: dict | None = None  # what produced the run, in short (rank 0)
        self.resumed: dict | None = None  # the checkpoint a run resumes from

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _, _ = step(self.model, batch)
        # Stop at a nan or inf loss, before it reaches the weights or a checkpoint.
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss), all=False):
            raise Diverged(self.global_step + 1, loss.item(), self.lr)
        self.loss_sum += loss.detach().float()
        self.loss_count += 1
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        t = self.cfg.train
        capped = t.epochs == self.current_epoch + 1 and self.trainer.is_last_batch
        if self.global_step >= t.max_steps or capped:
            self.trainer.should_stop = True  # and Lightning evaluates once more, at this step

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, outputs, targets = step(self.model, batch)
        self.val_loss.update(loss.float(), weight=len(targets))
        self.val_metrics.update(outputs.float(), targets)

    def on_validation_epoch_end(self) -> None:
        # Once an evaluation: logging metric objects per batch costs milliseconds a batch.
        scores = {"val/loss": self.val_loss.compute(), **self.val_metrics.compute()}
        self.val_loss.reset()
        self.val_metrics.reset()
        if self.trainer.sanity_checking:
            return
        loss = self.trainer.strategy.reduce(self.loss_sum / self.loss_count.clamp(min=1))
        row = {"step": self.global_step, "epoch": self.current_epoch + 1, "lr": self.lr}
        row |= {"train/loss": loss.item(), **{key: value.item() for key, value in scores.items()}}
        if not math.isfinite(row["val/loss"]):  # before anything is logged or saved
            raise Diverged(self.global_step, row["val/loss"], self.lr, "validation loss")
        check_finite(self.model, self.global_step, self.lr)
        self.loss_sum.zero_(), self.loss_count.zero_()
        self.stop = self.evals.add(row, self.cfg, self.perfect)
        if self.stop == "perfect":  # EarlyStopping stops the other case
            self.trainer.should_stop = True
        # float64: Lightning would round the learning rate to float32. The values are equal
        # on every process already; sync_dist leaves them so.
        values = {k: torch.tensor(v, dtype=torch.float64) for k, v in row.items()}
        self.log_dict(values, sync_dist=True)
        # What EarlyStopping follows: it grows exactly when an evaluation is better.
        self.log("best_step", float(self.evals.best["step"]), logger=False, sync_dist=True)

    @property
    def lr(self) -> float:
        return self.lr_schedulers().get_last_lr()[0]

{% if sharding %}
    def configure_model(self) -> None:
        # FSDP (train.strategy: fsdp): ModelParallelStrategy shards over its processes' mesh.
        if self.device_mesh is not None:
            shard(self.model, self.device_mesh["data_parallel"])

{% endif %}
    def configure_optimizers(self):
        optimizer, scheduler = training.build_optimizer(self.model, self.cfg, self.device)
        schedule = {"scheduler": scheduler, "interval": "step"}  # stepped per optimizer step
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def on_train_start(self) -> None:
        loss = self.resumed["loss"] if self.resumed else [0.0, 0.0]
        self.loss_sum, self.loss_count = torch.tensor(loss, device=self.device)
        if self.resumed is None:
            return
        training.set_rng_state(self.resumed["rng"])
        saved = self.resumed["hyper_parameters"]["cfg"]["train"]
        schedule = (self.optimizers(), self.lr_schedulers(), self.cfg, saved, self.global_step)
        training.continue_schedule(*schedule)
        # Early stopping restored the patience of the checkpoint: the one given now applies.
        self.trainer.early_stopping_callback.patience = self.cfg.train.patience or math.inf

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Besides the weights and hyperparameters: the progress and the random state, for a
        # resume that continues as the original would, in the raw engine's format.
        epoch = self.trainer.train_dataloader.state_dict()["epoch"]
        progress = {"step": self.global_step, "epoch": epoch, **asdict(self.evals)}
        checkpoint.update(task=TASK, engine=ENGINE, progress=progress, record=self.record)
        loss = [self.loss_sum.item(), self.loss_count.item()]
        checkpoint.update(rng=training.get_rng_state(), loss=loss)
        tracker = self.trainer.loggers[-1]
        checkpoint["tracker_run_id"] = tracker.version if len(self.trainer.loggers) > 1 else None

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        progress = checkpoint["progress"]
        self.evals = training.Evaluations.of(progress)
        self.resumed = checkpoint


class DataModule(L.LightningDataModule):
    """The training and validation sets of data.py, sharded over the DDP processes; each
    loader knows its place in the epoch, which Lightning saves and restores."""

    def __init__(self, cfg: Config, meta: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.train_set, self.val_set, self.meta = build_datasets(cfg, meta)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, train=False)

    def loader(self, dataset, train: bool) -> DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        device = self.trainer.strategy.root_device
        return make_loader(dataset, self.cfg, rank, world, device, train)


def train(cfg: Config, resume: str | Path | None = None, trial: Any = None) -> Outcome | None:
    """Train to the step budget with Lightning, evaluating and checkpointing as it goes;
    resume from a checkpoint. Returns the outcome on rank 0, None on the other ranks."""
    t = cfg.train
    resolve_device(t.accelerator)  # hardware that is missing: one line, before any folder
    checkpoint = runs.read_checkpoint(resume) if resume else None
    if checkpoint is not None:
        runs.check_resumable(checkpoint, cfg, resume, ENGINE)
    run_dir, continuing = runs.choose_run_dir(cfg, resume)
    first = global_rank() == 0
    with runs.RunClaim(run_dir, new_run=not continuing) if first else contextlib.nullcontext():
        if continuing and first:
            runs.check_continuable(run_dir)
        L.seed_everything(t.seed, workers=True, verbose=False)
        with runs.rebuilding_from(resume) if resume else contextlib.nullcontext():
            data = DataModule(cfg, checkpoint["hyper_parameters"]["meta"] if checkpoint else None)
            module = TaskModule(cfg.to_dict(), data.meta)
        if checkpoint is not None:  # before Lightning loads them, in words of its own
            runs.load_weights(module.model, runs.model_weights(checkpoint), resume)
        signals = training.StopSignals()
        baseline = {}
        if first:
            runs.prepare_run_dir(run_dir, cfg)
            module.record = write_record(run_dir, continuing)
        resumed = checkpoint if continuing else None
        trainer = make_trainer(cfg, data, signals, resumed, trial, module.record)
        if first:
            parameters = sum(p.numel() for p in module.model.parameters())
            show(f"{type(module.model).__name__}: {parameters:,} parameters")
            baseline = training.measure_baseline(data.val_set, data.meta, cfg)
            save_baseline(run_dir, baseline)
        if t.compile:
            module.model.compile()  # in place: the checkpoint's keys stay the plain model's
        os.environ[runs.RUN_NAME_ENV] = run_dir.name  # for the DDP processes Lightning starts
        try:
            with signals:
                trainer.fit(module, datamodule=data, ckpt_path=resume, weights_only=True)
        finally:
            del os.environ[runs.RUN_NAME_ENV]
    if not trainer.is_global_zero:
        return None
    reason = "max_steps" if trainer.global_step >= t.max_steps else "epochs"
    return Outcome(module.stop or reason, module.evals.best, module.evals.last, baseline)


def make_trainer(
    cfg: Config, data: DataModule, signals, resumed: dict | None, trial, record: dict | None
) -> L.Trainer:
    """The Trainer, its loggers and its callbacks, as the config says."""
    t, folder = cfg.train, cfg.run_dir / "checkpoints"
    device = resolve_device(t.accelerator)
    devices = resolve_devices(t.devices, device)
    world_size = devices * t.num_nodes
    batches = len(make_loader(data.train_set, cfg, 0, world_size, device, train=True))
    interval = training.eval_interval(cfg, batches)
    # RunCheckpoints: last.ckpt at each evaluation and on an interrupt, best.ckpt at each
    # better one. EarlyStopping is always there (patience 0: never stopping) so that its count
    # is in every checkpoint, for a resume that turns it on.
    stopping = EarlyStopping("best_step", mode="max", patience=t.patience or math.inf)
    callbacks = [parts.RunCheckpoints(cfg, signals), stopping]
    if trial is not None:
        callbacks.append(parts.Pruning(trial))
    bar = parts.progress_bar(cfg)
    loggers = [parts.MetricsCSV(cfg.run_dir, t.max_steps, resumed and resumed["progress"]["step"])]
    run_id = resumed and resumed.get("tracker_run_id")
    tracker = parts.tracker_logger(cfg, cfg.run_dir, run_id, record)
    callbacks.append(parts.RunReport(cfg, tracker, resumed=run_id is not None))
    return L.Trainer(
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
{% if sharding %}
        strategy=lightning_strategy(t.strategy, world_size),
{% else %}
        strategy="ddp" if world_size > 1 else "auto",
{% endif %}
        precision=resolve_precision(t.precision, device),
        max_steps=t.max_steps,
        max_epochs=t.epochs or -1,
        # Evaluate every so many batches, counted across epochs, as the raw loop does.
        val_check_interval=interval,
        check_val_every_n_epoch=None,
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip or None,
        logger=loggers + ([tracker] if tracker else []),
        log_every_n_steps=interval,
        callbacks=callbacks + ([bar] if bar else []),
        # A SLURM requeue signal makes Lightning save hpc_ckpt_N.ckpt here, beside last.ckpt.
        default_root_dir=folder,
        plugins=[parts.AtomicCheckpointIO()],
        use_distributed_sampler=False,  # make_loader shards the data itself, resumably
        enable_progress_bar=bar is not None,
        enable_model_summary=False,  # train prints the parameter count
    )
