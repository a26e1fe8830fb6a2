"""How the model trains: PyTorch Lightning's Trainer around the plain model of model.py.

`TaskModule` hands Lightning the model, its loss (model.py's `step`), metrics and optimizer,
and logs with `self.log`: what it logs (add your own) reaches metrics.csv and the progress
bar. `fit` sets the Trainer up with Lightning's own parts: ModelCheckpoint (last.ckpt and
best.ckpt), EarlyStopping, CSVLogger, LearningRateMonitor, the progress bar, SIGTERM and
SLURM handling, and `trainer.fit(ckpt_path=...)` to resume.
"""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .config import Config
from .model import MONITOR, MONITOR_MODE, build_metrics, build_model, build_optimizer, step
from .plumbing import Diverged, Interrupted, runs, training
from .plumbing.reporting import rows_before
from .plumbing.settings import load_config
{% if logger != "csv" %}
from .plumbing.tracker import open_tracker
{% endif %}

ENGINE = "lightning"
warnings.filterwarnings("ignore", ".*Experiment logs directory.*")  # config.yaml is there
warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")  # inside Lightning
{% if "sweeps" in extras %}
# A sweep's: called with (step, monitored value) after each evaluation; True stops the run.
ON_EVALUATION = None
{% endif %}


class TaskModule(L.LightningModule):
    """The model of model.py, with its loss, metrics and optimizer, and what it logs."""

    def __init__(self, cfg: dict, meta: dict, model: torch.nn.Module | None = None):
        super().__init__()
        self.save_hyperparameters(ignore="model", logger=False)  # kept in every checkpoint
        self.cfg = load_config(Config, base=cfg)
        self.model = model or build_model(self.cfg, meta)
        self.val_metrics = build_metrics(meta).clone(prefix="val/")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, _, _ = step(self.model, batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.global_step >= self.trainer.max_steps:
            self.trainer.should_stop = True  # so that Lightning evaluates the last step too

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, outputs, targets = step(self.model, batch)
        if not torch.isfinite(loss):  # before ModelCheckpoint saves a diverged model
            raise Diverged(self.global_step, self.trainer.default_root_dir)
        self.val_metrics.update(outputs.float(), targets)
        self.log("val/loss", loss, batch_size=len(targets), sync_dist=True)
        self.log_dict(self.val_metrics)  # computed and reset by Lightning at the epoch's end

    def configure_optimizers(self):
        optimizer, scheduler = build_optimizer(self.model, self.cfg)
        scheduler = {"scheduler": scheduler, "interval": "step"}  # stepped every optimizer step
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["random_state"] = training.random_state()  # dropout's, augmentation's

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A resumed run draws the random numbers the uninterrupted one would have; given a
        # larger --max-steps, its learning rate decays to its floor at the new end.
        training.set_random_state(checkpoint["random_state"])
        saved = checkpoint["hyper_parameters"]["cfg"]["train"]["max_steps"]
        for schedule in checkpoint["lr_schedulers"]:
            training.stretch_schedule(schedule, self.cfg.train.max_steps - saved)


class DataModule(L.LightningDataModule):
    """data.py's training and validation sets, each process reading its share."""

    def __init__(self, cfg: Config, train_set, val_set):
        super().__init__()
        self.cfg, self.train_set, self.val_set = cfg, train_set, val_set

    def train_dataloader(self):
        return self.loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self.loader(self.val_set, shuffle=False)

    def loader(self, dataset, shuffle: bool):
        t, trainer = self.cfg.train, self.trainer
        pin = trainer.strategy.root_device.type == "cuda"  # page-locked memory for the copies
        shard = (trainer.global_rank, trainer.world_size, t.num_workers, pin)
        return training.make_loader(dataset, t.batch_size, t.seed, shuffle, *shard)


def fit(cfg: Config, run_dir: Path, datasets: tuple, checkpoint_path=None, checkpoint=None) -> str:
    """Train on (training set, validation set, metadata) to the step budget or until early
    stopping, from a checkpoint when given; returns which of the two ended the run."""
    t, (train_set, val_set, meta) = cfg.train, datasets
    world_size = (torch.cuda.device_count() if t.devices == -1 else t.devices) * t.num_nodes
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on the GPUs that have them
    L.seed_everything(t.seed, verbose=False)
    module = TaskModule(cfg.to_dict(), meta)
    if t.compile:
        module.model.compile()  # in place: the checkpoint's names stay the plain model's
    logger = CSVLogger(run_dir, name="", version="")  # run_dir/metrics.csv, which it starts
    for row in rows_before(run_dir, checkpoint):  # afresh: a resumed run logs these again
        logger.log_metrics(row, row.pop("step"))
    # Evaluate every eval_every optimizer steps, counted over epochs, and at least once an epoch.
    per_epoch = max(1, len(train_set) // (t.batch_size * world_size))
    folder, monitor = run_dir / "checkpoints", {"monitor": MONITOR, "mode": MONITOR_MODE}
    best = callbacks.ModelCheckpoint(folder, "best", **monitor)
    last = callbacks.ModelCheckpoint(folder, "last")  # at every evaluation, to resume from
    patience = {"patience": t.patience or t.max_steps, "stopping_threshold": t.stopping_threshold}
    stopping = callbacks.EarlyStopping(**patience, **monitor)
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if world_size > 1 else "auto",
        precision=t.precision,
        max_steps=t.max_steps,
        val_check_interval=min(t.eval_every * t.accumulate, per_epoch),
        check_val_every_n_epoch=None,
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip or None,
        logger={{ "[logger, open_tracker(cfg.to_dict(), run_dir)]" if logger != "csv" else "logger" }},
        log_every_n_steps=min(50, t.eval_every, per_epoch),
        callbacks=[best, last, stopping, callbacks.LearningRateMonitor("step")],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=run_dir,  # where a SLURM requeue signal saves hpc_ckpt_N.ckpt
    )
{% if "sweeps" in extras %}
    if ON_EVALUATION is not None:
        trainer.callbacks.append(Told())
{% endif %}
    data = DataModule(cfg, train_set, val_set)
    try:
        trainer.fit(module, data, ckpt_path=checkpoint_path, weights_only=True)
    except SIGTERMException:  # after a batch: last.ckpt holds the last evaluation
        raise Interrupted(signal.SIGTERM, folder / "last.ckpt") from None
    return "max_steps" if trainer.global_step >= t.max_steps else "early_stopping"


def evaluate(model, dataset, cfg: Config, meta: dict, accelerator: str = "cpu") -> dict:
    """The loss and metrics of `model` on `dataset`, by Lightning's validation loop."""
    quiet = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer = L.Trainer(accelerator=accelerator, devices=1, **quiet)
    module, data = TaskModule(cfg.to_dict(), meta, model), DataModule(cfg, None, dataset)
    (scores,) = trainer.validate(module, data, verbose=False)
    return {key: float(value) for key, value in scores.items()}
{% if "sweeps" in extras %}


class Told(L.Callback):
    """Tells ON_EVALUATION each evaluation (optuna-integration's pruning callback reports the
    epoch, and this project evaluates every eval_every steps, several times an epoch)."""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if ON_EVALUATION(trainer.global_step, float(trainer.callback_metrics[MONITOR])):
            trainer.should_stop = True
{% endif %}


class AtomicCheckpointIO(TorchCheckpointIO):
    """What this project promises and Lightning does not: checkpoints written beside their
    target and renamed over it, so that a process killed while saving leaves the previous
    one whole (Lightning's writer truncates it first)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        runs.save_atomically(checkpoint, Path(path))
