"""The training engine: PyTorch Lightning's Trainer around the plain model of model.py.

`TaskModule` wraps the model with its loss, metrics and optimizer; `DataModule` serves the
datasets of data.py; `train` sets the Trainer up from the config. The run is the one the
plain-PyTorch engine makes, step for step: a budget of max_steps optimizer steps, an
evaluation every eval_every steps (and at least once an epoch) with a metrics row,
last.ckpt, best.ckpt when it improved, and early stopping after `patience` evaluations.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader
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
    set_rng_state,
    val_loss_metric,
)

ENGINE = "lightning"

# The data sets are tensors in memory or small files: the worker count is a setting
# (train.num_workers), and Lightning's advice to raise it is noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# A deprecation inside Lightning itself with recent torch releases; nothing to act on here.
warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
# A resumed run writes into its own checkpoints/ folder on purpose.
warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
# Keep Lightning's start-up banner (GPU available, TPU available...) and its note on
# SIGTERM out of the output: the engine says what it does with a signal itself.
for name in ("utilities.rank_zero", "accelerators.cuda", "trainer.connectors.signal_connector"):
    logging.getLogger(f"lightning.pytorch.{name}").setLevel(logging.WARNING)


class TaskModule(L.LightningModule):
    """The model of model.py with its loss, validation metrics and optimizer."""

    def __init__(self, cfg: Config, meta: dict):
        super().__init__()
        self.cfg, self.meta = cfg, meta
        self.record = None  # what produced the run, in short (rank 0); checkpoints carry it
        self.model = build_model(cfg, meta)
        self.val_metrics = build_metrics(meta).clone(prefix="val/")
        self.metric_names = list(build_metrics(meta))  # acc, mse, r2, ppl...
        self.val_loss = val_loss_metric()
        # The training loss since the last evaluation; saved, so that a resume keeps it.
        self.train_loss = MeanMetric()
        self.train_loss.persistent(True)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)

    def training_step(self, batch, batch_idx: int):
        loss, _, targets = step(self.model, batch)
        # Stop at a nan or inf loss, before it reaches the weights or a checkpoint.
        if self.trainer.strategy.reduce_boolean_decision(not torch.isfinite(loss), all=False):
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            raise Diverged(self.global_step + 1, loss.item(), lr)
        self.train_loss.update(loss.detach(), weight=len(targets))
        return loss

    def validation_step(self, batch, batch_idx: int):
        loss, outputs, targets = step(self.model, batch)
        self.val_loss.update(loss.float(), weight=len(targets))
        self.val_metrics.update(outputs.float(), targets)

    def on_validation_epoch_end(self) -> None:
        # Logged once an evaluation, not per batch: Lightning's logging of metric objects
        # costs milliseconds a batch. compute() has reduced over the DDP processes already;
        # sync_dist averages equal values, which leaves them as they are, and says so.
        self.log("val/loss", self.val_loss.compute(), sync_dist=True)
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_loss.reset()
        self.val_metrics.reset()

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.model, self.cfg, self.device)
        schedule = {"scheduler": scheduler, "interval": "step"}  # stepped per optimizer step
        return {"optimizer": optimizer, "lr_scheduler": schedule}

    def on_train_start(self) -> None:
        if getattr(self, "rng_state", None) is not None:  # resumed
            set_rng_state(self.rng_state)
        # A larger --max-steps: the rate goes on from where it was (see WarmupCosine).
        self.lr_schedulers().lr_lambdas[0].extend(self.global_step, self.cfg.train.max_steps)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What evaluate, predict and export need to rebuild the model without the data,
        # and the random state, so that a resumed run continues as the original would.
        checkpoint.update(task=TASK, engine=ENGINE, config=self.cfg.to_dict(), meta=self.meta)
        checkpoint["rng"] = get_rng_state()
        checkpoint["record"] = self.record

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.rng_state = checkpoint.get("rng")


class DataModule(L.LightningDataModule):
    """The training and validation sets of data.py, sharded over the DDP processes."""

    def __init__(self, cfg: Config, meta: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.train_set, self.val_set, self.meta = build_datasets(cfg, meta)

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, train=False)

    def loader(self, dataset, train: bool) -> DataLoader:
        # The loader knows its place in the epoch; Lightning saves and restores it.
        rank, world_size = self.trainer.global_rank, self.trainer.world_size
        device = self.trainer.strategy.root_device
        return make_loader(dataset, self.cfg, rank, world_size, device, train)


class Evaluations(L.Callback):
    """The run as the plain-PyTorch engine reports it: a progress bar over the budget, a
    metrics row and a line per evaluation, the baseline; and the stops that Lightning has
    no setting for (the last evaluation at the end of the budget, Ctrl-C and SIGTERM)."""

    def __init__(
        self,
        cfg: Config,
        continuing: bool,
        signals: StopSignals,
        trial: Any = None,
        tracker_run_id: str | None = None,
    ):
        self.cfg, self.continuing, self.signals, self.trial = cfg, continuing, signals, trial
        self.tracker_run_id = tracker_run_id  # a continued run logs into its tracker run
        self.best: dict[str, float] = {}
        self.last: dict[str, float] = {}
        # Not self.log: Lightning sets every callback's `log` to the module's log method.
        self.metrics_log, self.progress = None, None

    def on_train_start(self, trainer: L.Trainer, module: TaskModule) -> None:
        t = self.cfg.train
        # fit() put Lightning's SIGTERM handler first: it stops at points of its own, even
        # mid-validation, and exits with code 0 without a checkpoint. Stop after a step instead.
        self.signals.reclaim()
        self.stepped_at = trainer.global_step
        if trainer.early_stopping_callback is not None:  # not the patience of the checkpoint
            trainer.early_stopping_callback.patience = t.patience
        self.progress = Progress(trainer.global_step, t.max_steps, trainer.is_global_zero)
        if trainer.is_global_zero:
            resumed_step = trainer.global_step if self.continuing else None
            self.metrics_log = MetricsLog(
                self.cfg.run_dir, self.cfg, resumed_step, self.tracker_run_id
            )
            parameters = sum(p.numel() for p in module.model.parameters())
            self.progress.print(f"{type(module.model).__name__}: {parameters:,} parameters")
        # What a model that learned nothing scores on the validation split.
        loader = trainer.datamodule.val_dataloader()
        metrics = build_metrics(module.meta).to(module.device)
        baseline = build_baseline(module.meta).to(module.device)
        scores = evaluate_model(baseline, loader, metrics, module.device)
        self.baseline = {"name": BASELINE, **scores}
        if trainer.is_global_zero:
            save_baseline(self.cfg.run_dir, self.baseline)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.stepped_at:  # a micro-batch of an accumulation
            return
        self.stepped_at = trainer.global_step
        t = self.cfg.train
        self.progress.update(trainer.global_step, trainer.current_epoch + 1, outputs["loss"])
        stop_asked = self.signals.received is not None
        if trainer.strategy.reduce_boolean_decision(stop_asked, all=False):
            last = self.cfg.run_dir / "checkpoints" / "last.ckpt"
            trainer.save_checkpoint(last, weights_only=False)
            raise Interrupted(self.signals.received, trainer.global_step)
        last_epoch = t.epochs == trainer.current_epoch + 1 and trainer.is_last_batch
        if trainer.global_step >= t.max_steps or last_epoch:
            trainer.should_stop = True  # Lightning evaluates once more when asked to stop

    def on_validation_end(self, trainer: L.Trainer, module: TaskModule) -> None:
        logged = trainer.callback_metrics
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        # Before the checkpoint callbacks, which Lightning runs after this one.
        if not math.isfinite(logged["val/loss"].item()):  # the last step broke the weights
            raise Diverged(trainer.global_step, logged["val/loss"].item(), lr, "validation loss")
        row = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch + 1,
            "lr": lr,
            "train/loss": module.train_loss.compute().item(),  # averaged over all ranks
            "val/loss": logged["val/loss"].item(),
        }
        row.update({f"val/{key}": logged[f"val/{key}"].item() for key in module.metric_names})
        module.train_loss.reset()
        self.last = row
        if improved(row[MONITOR], self.best.get(MONITOR), MONITOR_MODE):
            self.best = row
        if trainer.is_global_zero:
            self.metrics_log.write(row)
            self.progress.print(describe(row, self.cfg.train.max_steps))
        if self.trial is not None:
            self.trial.report(row[MONITOR], trainer.global_step)  # an Optuna sweep may prune
            if self.trial.should_prune():
                import optuna

                raise optuna.TrialPruned(f"pruned at step {trainer.global_step}")

    def on_save_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        checkpoint["evaluations"] = {"best": self.best, "last": self.last}
        checkpoint["tracker_run_id"] = self.metrics_log and self.metrics_log.tracker.run_id

    def on_load_checkpoint(self, trainer, module, checkpoint: dict) -> None:
        self.best = checkpoint.get("evaluations", {}).get("best", {})
        self.last = checkpoint.get("evaluations", {}).get("last", {})

    def teardown(self, trainer, module, stage: str) -> None:
        self.close()

    def on_exception(self, trainer, module, exception: BaseException) -> None:
        self.close(exception)  # Lightning skips teardown then

    def close(self, error: BaseException | None = None) -> None:
        """End the progress bar and the tracker's run, once."""
        if self.progress is not None:
            self.progress.close()
        if self.metrics_log is not None:
            self.metrics_log.close(error)
        self.progress = self.metrics_log = None


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps its record (the best score...) when the run folder was
    moved or copied since the checkpoint: Lightning's own forgets it with a warning, and
    then the next evaluation overwrites best.ckpt, better or not."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and old != self.dirpath:

            def moved(path: str | None) -> str | None:
                return self.dirpath + path[len(old) :] if path and path.startswith(old) else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_model_path": moved(state_dict["best_model_path"]),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                "last_model_path": moved(state_dict.get("last_model_path")),
                "best_k_models": {moved(k): v for k, v in state_dict["best_k_models"].items()},
            }
        super().load_state_dict(state_dict)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their target, then renamed over it (runs.save_atomically).

    Lightning's own writer stages the file in the temporary folder, which may be another
    filesystem, and then copies it in place: a kill during the copy leaves a broken file.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any = None) -> None:
        save_atomically(checkpoint, Path(path))


def train(cfg: Config, resume: str | Path | None = None, trial: Any = None) -> Outcome | None:
    """Train to the step budget with Lightning, evaluating and checkpointing as it goes;
    resume from a checkpoint. Returns the outcome on rank 0, None on the other ranks."""
    t = cfg.train
    device = resolve_device(t.accelerator)
    checkpoint = read_checkpoint(resume) if resume else None
    if checkpoint is not None:
        check_resumable(checkpoint, cfg, resume, ENGINE, progress_of)
    run_dir, continuing = choose_run_dir(cfg, resume)
    L.seed_everything(t.seed, workers=True, verbose=False)

    datamodule = DataModule(cfg, checkpoint["meta"] if checkpoint else None)
    module = TaskModule(cfg, datamodule.meta)
    devices = resolve_devices(t.devices, device)
    world_size = devices * t.num_nodes
    batches = len(make_loader(datamodule.train_set, cfg, 0, world_size, device, train=True))
    signals = StopSignals()
    tracker_run_id = checkpoint.get("tracker_run_id") if continuing else None
    evaluations = Evaluations(cfg, continuing, signals, trial, tracker_run_id)
    callbacks = [
        evaluations,
        RunCheckpoint(  # best.ckpt, when the monitored metric improves
            dirpath=run_dir / "checkpoints",
            filename="best",
            monitor=MONITOR,
            mode=MONITOR_MODE,
            enable_version_counter=False,  # overwrite best.ckpt instead of best-v1.ckpt
        ),
        RunCheckpoint(  # last.ckpt, at every evaluation
            dirpath=run_dir / "checkpoints", filename="last", enable_version_counter=False
        ),
    ]
    if t.patience:
        callbacks.append(
            EarlyStopping(
                MONITOR, mode=MONITOR_MODE, patience=t.patience, check_on_train_epoch_end=False
            )
        )
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if world_size > 1 else "auto",
        precision=resolve_precision(t.precision, device),
        max_steps=t.max_steps,
        max_epochs=t.epochs or -1,
        # Evaluate every so many batches, counted across epochs, as the raw loop does.
        val_check_interval=eval_interval(cfg, batches),
        check_val_every_n_epoch=None,
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip or None,
        logger=False,  # tracking.MetricsLog writes metrics.csv and the tracker
        callbacks=callbacks,
        # A SLURM requeue signal makes Lightning save hpc_ckpt_N.ckpt here, beside last.ckpt.
        default_root_dir=run_dir / "checkpoints",
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # make_loader shards the data itself
        enable_progress_bar=False,  # tracking.Progress shows the steps, as in the raw engine
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if trainer.is_global_zero:
        prepare_run_dir(run_dir, cfg)
        module.record = write_record(run_dir, continuing)
    if t.compile:
        module.model.compile()  # in place: the checkpoint's keys stay those of the plain model
    with signals:
        # Tensors and plain values only: loading runs no code from the checkpoint file.
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if not trainer.is_global_zero:
        return None
    stopper = trainer.early_stopping_callback
    if stopper is not None and stopper.wait_count >= stopper.patience:
        reason = "early_stopping"
    else:
        reason = "max_steps" if trainer.global_step >= t.max_steps else "epochs"
    return Outcome(reason, evaluations.best, evaluations.last, evaluations.baseline)


def progress_of(checkpoint: dict[str, Any], patience: int) -> dict[str, Any]:
    """How far a checkpoint's run went: its step, its completed epochs, stopped early."""
    fit_loop = checkpoint["loops"]["fit_loop"]["state_dict"]
    stopper = next((v for k, v in checkpoint["callbacks"].items() if "EarlyStopping" in k), {})
    stopped = bool(patience) and stopper.get("wait_count", 0) >= patience
    epoch = fit_loop["combined_loader"][0]["epoch"] if "combined_loader" in fit_loop else 0
    return {"step": checkpoint["global_step"], "epoch": epoch, "stopped": stopped}


def evaluate(
    checkpoint_path: str | Path, data: str | Path | None = None, accelerator: str = "auto"
) -> dict[str, float]:
    """Metrics of a checkpoint on the validation split it was trained with, or on `data`."""
    module, cfg, meta = load_module(checkpoint_path)
    if data is None:
        _, dataset, _ = build_datasets(cfg, meta)
    else:
        dataset = load_dataset(data, cfg, meta)
    device = resolve_device(accelerator)  # a clear error when the hardware is absent
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # The validation samples of training (train.eval_batches), batched alike.
    loader = make_loader(dataset, cfg, 0, 1, device, train=False)
    (metrics,) = trainer.validate(module, dataloaders=loader, verbose=False)
    return metrics


def load_module(checkpoint_path: str | Path) -> tuple[TaskModule, Config, dict]:
    checkpoint = read_checkpoint(checkpoint_path)
    if checkpoint.get("engine") != ENGINE:
        raise UserError(
            f"{checkpoint_path} was written by the {checkpoint.get('engine')} engine; "
            "this project trains with Lightning"
        )
    cfg = load_config(base=checkpoint["config"])
    module = TaskModule(cfg, checkpoint["meta"])
    module.load_state_dict(checkpoint["state_dict"])
    return module.eval(), cfg, checkpoint["meta"]


def load_model(checkpoint_path: str | Path) -> tuple[torch.nn.Module, Config, dict]:
    """The trained plain model (in eval mode, on the CPU), its config and its metadata."""
    module, cfg, meta = load_module(checkpoint_path)
    return module.model, cfg, meta
