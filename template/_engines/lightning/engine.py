"""The training engine: PyTorch Lightning's Trainer around the plain model of model.py.

`TaskModule` wraps the model with its loss, metrics and optimizer; `DataModule` serves the
datasets of data.py; `train` sets the Trainer up from the config: hardware, precision,
checkpoints, early stopping and loggers, all writing into runs/<name>/.
"""

from __future__ import annotations

import csv
import logging
import math
import random
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchmetrics import MeanMetric

from .config import (
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

ENGINE = "lightning"

# The data sets are tensors in memory or small files: the worker count is a setting
# (train.num_workers), and Lightning's advice to raise it is noise here.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# A deprecation inside Lightning itself with recent torch releases; nothing to act on here.
warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
# Keep Lightning's start-up banner (GPU available, TPU available...) out of the output.
logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
logging.getLogger("lightning.pytorch.accelerators.cuda").setLevel(logging.WARNING)


class TaskModule(L.LightningModule):
    """The model of model.py with its loss, validation metrics and optimizer."""

    def __init__(self, cfg: Config, meta: dict):
        super().__init__()
        self.cfg, self.meta = cfg, meta
        self.model = build_model(cfg, meta)
        self.val_metrics = build_metrics(meta).clone(prefix="val/")
        self.val_loss = MeanMetric()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        loss = compute_loss(self.model(inputs), targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs, targets = batch
        outputs = self.model(inputs).float()
        self.val_loss.update(compute_loss(outputs, targets), weight=len(targets))
        self.val_metrics.update(outputs, targets)
        self.log("val/loss", self.val_loss, prog_bar=True)
        self.log_dict(self.val_metrics, prog_bar=True)

    def configure_optimizers(self):
        t = self.cfg.train
        # Fused AdamW is one kernel per step instead of one per parameter, on CUDA only.
        optimizer = torch.optim.AdamW(
            self.parameters(),
            lr=t.lr,
            weight_decay=t.weight_decay,
            fused=self.device.type == "cuda",
        )
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        warmup_steps = int(t.warmup_ratio * total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # What evaluate, predict and export need to rebuild the model without the data,
        # and the random state, so that a resumed run continues as the original would.
        checkpoint.update(
            task=TASK,
            engine=ENGINE,
            config=self.cfg.to_dict(),
            meta=self.meta,
            rng=get_rng_state(),
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.rng_state = checkpoint.get("rng")

    def on_train_start(self) -> None:
        if getattr(self, "rng_state", None) is not None:
            set_rng_state(self.rng_state)


class EpochSummary(L.Callback):
    """One line of metrics per epoch on rank 0, as the plain-PyTorch engine prints."""

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            metrics = trainer.callback_metrics
            values = "  ".join(f"{k} {metrics[k].item():.4g}" for k in sorted(metrics))
            epoch = f"{trainer.current_epoch + 1}/{trainer.max_epochs}"
            print(f"epoch {epoch}  step {trainer.global_step}  {values}", flush=True)


class DataModule(L.LightningDataModule):
    """The training and validation sets of data.py, sharded over the DDP processes."""

    def __init__(self, cfg: Config, meta: dict | None = None):
        super().__init__()
        self.cfg = cfg
        self.train_set, self.val_set, self.meta = build_datasets(cfg, meta)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.train_set, self.cfg, self.trainer, train=True)

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.cfg, self.trainer, train=False)


def train(cfg: Config, resume: str | Path | None = None) -> dict[str, float] | None:
    """Fit with Lightning, writing the run folder; resume from a checkpoint.

    Returns the last epoch's metrics on rank 0, None on the other ranks.
    """
    t = cfg.train
    device = resolve_device(t.accelerator)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    checkpoint = read_checkpoint(resume) if resume else None
    if checkpoint is not None:
        check_same_model(checkpoint, cfg, Path(resume))
        if checkpoint.get("engine") != ENGINE:
            raise UserError(f"{resume} was written by the {checkpoint.get('engine')} engine")
        if checkpoint["epoch"] + 1 >= t.epochs:
            raise UserError(
                f"{resume} has trained its {t.epochs} epochs already; "
                "pass --epochs with a larger number to train on"
            )
        stopper = next((v for k, v in checkpoint["callbacks"].items() if "EarlyStopping" in k), {})
        if t.patience and stopper.get("wait_count", 0) >= stopper.get("patience", t.patience):
            raise UserError(
                f"{resume} stopped early ({MONITOR} did not improve for {t.patience} epochs); "
                "to train on, resume with --set train.patience=0"
            )
        run_dir = Path(resume).resolve().parent.parent
        t.output_dir, t.name = str(run_dir.parent), run_dir.name
    else:
        t.name = t.name or new_run_name()
    L.seed_everything(t.seed, workers=True, verbose=False)

    datamodule = DataModule(cfg, checkpoint["meta"] if checkpoint else None)
    module = TaskModule(cfg, datamodule.meta)
    # Written at every log call (once or twice an epoch), so that a crash loses no rows.
    loggers = [CSVLogger(t.output_dir, name=t.name, version="", flush_logs_every_n_steps=1)]
    if t.logger == "tensorboard":
        loggers.append(TensorBoardLogger(t.output_dir, name=t.name, version="tensorboard"))
    callbacks = [
        # best.ckpt when the monitored metric improves; last.ckpt every epoch. (save_last
        # would write last.ckpt only along with a new best.)
        ModelCheckpoint(
            dirpath=cfg.run_dir / "checkpoints",
            filename="best",
            monitor=MONITOR,
            mode=MONITOR_MODE,
            enable_version_counter=False,  # overwrite best.ckpt instead of best-v1.ckpt
        ),
        ModelCheckpoint(
            dirpath=cfg.run_dir / "checkpoints", filename="last", enable_version_counter=False
        ),
        LearningRateMonitor(logging_interval="epoch"),
        EpochSummary(),
    ]
    if t.patience:
        callbacks.append(EarlyStopping(MONITOR, mode=MONITOR_MODE, patience=t.patience))
    devices = resolve_devices(t.devices, device)
    trainer = L.Trainer(
        accelerator=t.accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if devices > 1 or t.num_nodes > 1 else "auto",
        precision=resolve_precision(t.precision, device),
        max_epochs=t.epochs,
        accumulate_grad_batches=t.accumulate,
        gradient_clip_val=t.grad_clip or None,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=cfg.run_dir,
        use_distributed_sampler=False,  # make_loader shards the data itself
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0 if checkpoint else 2,
    )
    if trainer.is_global_zero:
        prepare_run_dir(cfg, loggers[0], checkpoint)
        parameters = sum(p.numel() for p in module.model.parameters())
        print(f"{type(module.model).__name__}: {parameters:,} parameters", flush=True)
    if t.compile:
        module.model.compile()  # in place: the checkpoint's keys stay those of the plain model
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
    if not trainer.is_global_zero:
        return None
    metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
    metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
    return metrics


def evaluate(
    checkpoint_path: str | Path, data: str | Path | None = None, accelerator: str = "auto"
) -> dict[str, float]:
    """Metrics of a checkpoint on the validation split it was trained with, or on `data`."""
    module, cfg, meta = load_module(checkpoint_path)
    if data is None:
        _, dataset, _ = build_datasets(cfg, meta)
    else:
        dataset = load_dataset(data, cfg, meta)
    resolve_device(accelerator)  # a clear error when the hardware is absent
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size)
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


# --- helpers ---------------------------------------------------------------------------


def prepare_run_dir(cfg: Config, csv_logger: CSVLogger, checkpoint: dict | None) -> None:
    """On rank 0: claim a new run folder, or carry a resumed run's metrics over."""
    metrics_file = cfg.run_dir / "metrics.csv"
    rows = []
    if checkpoint is None and cfg.run_dir.exists():
        raise UserError(
            f"run folder {cfg.run_dir} exists already; pick another --name, "
            "or continue it with --resume last"
        )
    if checkpoint is not None and metrics_file.is_file():
        with metrics_file.open(newline="") as file:
            rows = [r for r in csv.DictReader(file) if int(r["step"]) < checkpoint["global_step"]]
    with warnings.catch_warnings():
        # CSVLogger starts metrics.csv afresh on resume; the rows so far are logged again below.
        warnings.simplefilter("ignore")
        writer = csv_logger.experiment
    if checkpoint is not None:  # resuming writes into the run's checkpoints/ on purpose
        warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
    for row in rows:
        values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"}
        if "epoch" in values:
            values["epoch"] = int(values["epoch"])
        writer.log_metrics(values, step=int(row["step"]))
    save_config(cfg, cfg.run_dir / "config.yaml")


def make_loader(dataset: Dataset, cfg: Config, trainer: L.Trainer, train: bool) -> DataLoader:
    """A loader over this rank's share of the data, shuffled per epoch when training.

    Lightning calls the sampler's set_epoch, so a resumed run sees the same order.
    """
    world_size = trainer.world_size
    sampler = DistributedSampler(
        dataset,
        num_replicas=world_size,
        rank=trainer.global_rank,
        shuffle=train,
        seed=cfg.train.seed,
    )
    return DataLoader(
        dataset,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        drop_last=train and len(dataset) >= cfg.train.batch_size * world_size,
        **loader_processes(cfg.train.num_workers, world_size),
        pin_memory=trainer.strategy.root_device.type == "cuda",
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
