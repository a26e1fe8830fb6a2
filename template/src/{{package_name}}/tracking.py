"""What a run reports: the progress bar, a line and a metrics.csv row per evaluation (and the
configured tracker: TensorBoard, MLflow or W&B), the trivial baseline, the closing summary and
the learning curves.

Both engines report through these, so their output reads the same. Rank 0 only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import PROJECT, Config, require_extra
from .model import MONITOR
from .runs import temporary_beside
from .training import Interrupted, Outcome

# How each stop reason reads, in the summary and in the docs.
STOP_REASONS = {
    "max_steps": "the step budget is spent ({steps} steps)",
    "epochs": "the epoch cap is reached ({epochs} epochs)",
    "early_stopping": "early stopping: {monitor} has not improved for {patience} evaluations",
}


class Progress:
    """A progress bar over the step budget, in a terminal only; lines print above it."""

    def __init__(self, step: int, max_steps: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            self.bar = tqdm(total=max_steps, initial=step, unit="step", leave=False)

    def update(self, step: int, epoch: int, loss: Any) -> None:
        if self.bar is None:  # no per-step work at all without a bar
            return
        self.bar.update(step - self.bar.n)
        if step % 10 == 0 or step == self.bar.total:  # .item() waits for the GPU: not every step
            self.bar.set_postfix(epoch=epoch, loss=f"{float(loss):.4f}", refresh=False)

    def print(self, line: str) -> None:
        if self.bar is None:
            print(line, flush=True)
        else:
            self.bar.write(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def describe(row: dict[str, float], max_steps: int) -> str:
    """An evaluation's line: step 200/1000  epoch 13  lr 0.0028  train/loss 0.41  val/..."""
    values = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("step", "epoch"))
    return f"step {row['step']}/{max_steps}  epoch {row['epoch']}  {values}"


class MetricsLog:
    """metrics.csv, one row per evaluation, plus the tracker the config names.

    `run_id` continues a tracker run: a resumed run logs into the run it started.
    """

    def __init__(
        self, run_dir: Path, cfg: Config, resumed_step: int | None, run_id: str | None = None
    ):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resumed_step is not None and self.path.is_file():
            # Keep the evaluations the checkpoint has seen; later ones are made again.
            with self.path.open(newline="") as file:
                rows = [r for r in csv.DictReader(file) if _step(r) <= resumed_step]
        self.fields = list(rows[0]) if rows else None
        self._rewrite(rows)
        self.tracker = open_tracker(cfg, run_dir, run_id if resumed_step is not None else None)

    def write(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.fields).writerow(row)
        self.tracker.log(row)

    def _rewrite(self, rows: list[dict]) -> None:
        # Atomic: a kill while a resumed run trims the file leaves the old rows, not none.
        with temporary_beside(self.path) as tmp, tmp.open("w", newline="") as file:
            if self.fields is not None:
                writer = csv.DictWriter(file, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)

    def close(self, error: BaseException | None = None) -> None:
        """End the tracker's run: finished, or failed or killed by `error`."""
        self.tracker.close(end_status(error))


def _step(row: dict[str, str]) -> float:
    try:
        return float(row["step"])
    except (KeyError, TypeError, ValueError):  # a line cut short by a kill
        return math.inf


def end_status(error: BaseException | None) -> str:
    """How a run ended, for the tracker: finished, killed (Ctrl-C, SIGTERM) or failed."""
    if error is None:
        return "finished"
    if isinstance(error, Interrupted | KeyboardInterrupt):
        return "killed"
    optuna = sys.modules.get("optuna")
    if optuna is not None and isinstance(error, optuna.TrialPruned):
        return "finished"  # a sweep's trial that the pruner stopped: a normal end
    return "failed"


# --- trackers: each imports its library only when a run uses it ----------------------------


class Tracker:
    """metrics.csv only (MetricsLog writes it): nothing more to log.

    A tracker logs each evaluation's row (the metrics.csv columns, at x = its step), takes
    the run name and the config, and has a run id that a resumed run gives back to it.
    """

    run_id: str | None = None

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None = None):
        pass

    def log(self, row: dict[str, float]) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class TensorBoard(Tracker):
    """Event files in the run folder: tensorboard --logdir runs."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None = None):
        require_extra("tensorboard", "--logger tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        # The same folder on resume: TensorBoard reads every event file in it.
        self.writer = SummaryWriter(run_dir / "tensorboard")

    def log(self, row: dict[str, float]) -> None:
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class MLflow(Tracker):
    """A run in MLflow's store: train.tracking_uri, else MLFLOW_TRACKING_URI, else the
    SQLite file mlflow.db in the working directory (MLflow's own default; `mlflow ui` there
    shows it). The experiment is the project's name (or MLFLOW_EXPERIMENT_NAME)."""

    STATUS = {"finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None = None):
        require_extra("mlflow", "--logger mlflow")
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = cfg.train.tracking_uri or os.environ.get(
            "MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"
        )
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is not None:  # a resumed run: the same run, its parameters logged already
            self.client.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        experiment_id = self.experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT))
        tags = {"folder": str(run_dir)}
        if cfg.train.group:
            tags["group"] = cfg.train.group
        run = self.client.create_run(experiment_id, run_name=cfg.train.name, tags=tags)
        self.run_id = run.info.run_id
        params = [Param(key, str(value)) for key, value in flatten(cfg.to_dict()).items()]
        self.client.log_batch(self.run_id, params=params)

    def experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name)
        except MlflowException:  # made meanwhile by another process (a sweep's other worker)
            return self.client.get_experiment_by_name(name).experiment_id

    def log(self, row: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        step = int(row["step"])
        metrics = [Metric(k, float(v), now, step) for k, v in row.items() if k != "step"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=self.STATUS[status])


class WandB(Tracker):
    """A Weights & Biases run, its files in the run folder (or WANDB_DIR): online when you
    are logged in (`wandb login`), offline otherwise (`wandb sync` uploads it later).
    WANDB_MODE overrides; the project is the project's name (or WANDB_PROJECT)."""

    def __init__(self, cfg: Config, run_dir: Path, run_id: str | None = None):
        require_extra("wandb", "--logger wandb")
        import wandb

        mode = None  # WANDB_MODE decides when it is set
        if "WANDB_MODE" not in os.environ:
            # Credentials found without asking or checking them: online; none: offline.
            mode = "online" if wandb.login(prompt=False, verify=False) else "offline"
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=cfg.train.name,
            group=cfg.train.group,
            config=cfg.to_dict(),
            dir=os.environ.get("WANDB_DIR", run_dir),
            id=run_id,
            resume="allow" if run_id else None,
            mode=mode,
            reinit="finish_previous",  # a sweep's trials are runs of one process, in turn
        )
        self.run_id = self.run.id

    def log(self, row: dict[str, float]) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "finished" else 1)


TRACKERS = {"csv": Tracker, "tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB}


def open_tracker(cfg: Config, run_dir: Path, run_id: str | None = None) -> Tracker:
    """The tracker of train.logger, continuing run `run_id` when given."""
    return TRACKERS[cfg.train.logger](cfg, run_dir, run_id)


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}: the config's settings as parameters."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- the trivial baseline, the summary and the curves -------------------------------------


def save_baseline(run_dir: Path, baseline: dict[str, Any]) -> None:
    (run_dir / "baseline.json").write_text(json.dumps(baseline, indent=2), encoding="utf-8")


def read_baseline(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "baseline.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def summary(outcome: Outcome, cfg: Config) -> list[str]:
    """Why the run stopped and its best evaluation, beside what a model that learned nothing
    scores: "val/acc 0.7212 (majority class 0.1818)"."""
    t = cfg.train
    steps = outcome.last.get("step")
    reason = STOP_REASONS[outcome.reason].format(
        steps=steps, epochs=t.epochs, monitor=MONITOR, patience=t.patience
    )
    baseline = outcome.baseline
    values = []
    for key, value in outcome.best.items():
        if key.startswith("val/"):
            beside = f" ({baseline['name']} {baseline[key]:.4f})" if key in baseline else ""
            values.append(f"{key} {value:.4f}{beside}")
    return [
        f"stopped after step {steps}: {reason}",
        f"best (step {int(outcome.best['step'])}, best.ckpt): {'  '.join(values)}",
        f"run folder: {cfg.run_dir}",
    ]


def plot_learning_curves(run_dir: Path) -> Path:
    """curves.png: the losses and the validation metrics over the steps, from metrics.csv,
    with the trivial baseline as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    curves: dict[str, tuple[list[float], list[float]]] = {}
    with (run_dir / "metrics.csv").open(newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if "/" in key and value not in ("", None):
                    steps, values = curves.setdefault(key, ([], []))
                    steps.append(float(row["step"]))
                    values.append(float(value))
    baseline = read_baseline(run_dir)
    losses = [key for key in curves if key.endswith("/loss")]
    others = [key for key in curves if key not in losses]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys, title in ((axes[0], losses, "loss"), (axes[1], others, "validation metrics")):
        for key in keys:
            (line,) = ax.plot(*curves[key], marker=".", label=key)
            if key in baseline:
                label = f"{key}, {baseline['name']}"
                ax.axhline(baseline[key], color=line.get_color(), linestyle="--", label=label)
        ax.set(title=title, xlabel="step")
        if keys:
            ax.legend()
    figure.tight_layout()
    path = run_dir / "curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
