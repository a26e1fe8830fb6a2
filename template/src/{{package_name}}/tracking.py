"""What a run reports: the progress bar, a line and a metrics.csv row per evaluation (and the
configured tracker), the trivial baseline, the closing summary and the learning curves.

Both engines report through these, so their output reads the same. Rank 0 only.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from .config import Config
from .model import MONITOR
from .training import Outcome

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
    """metrics.csv, one row per evaluation, plus the tracker the config names."""

    def __init__(self, run_dir: Path, cfg: Config, resumed_step: int | None):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resumed_step is not None and self.path.is_file():
            # Keep the evaluations the checkpoint has seen; later ones are made again.
            with self.path.open(newline="") as file:
                rows = [r for r in csv.DictReader(file) if _step(r) <= resumed_step]
        self.fields = list(rows[0]) if rows else None
        self._rewrite(rows)
        self.tracker = open_tracker(cfg, run_dir) if cfg.train.logger != "csv" else None

    def write(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self.fields = list(row)
            self._rewrite([])
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=self.fields).writerow(row)
        if self.tracker is not None:
            self.tracker.log(row)

    def _rewrite(self, rows: list[dict]) -> None:
        with self.path.open("w", newline="") as file:
            if self.fields is not None:
                writer = csv.DictWriter(file, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()


def _step(row: dict[str, str]) -> float:
    try:
        return float(row["step"])
    except (KeyError, TypeError, ValueError):  # a line cut short by a kill
        return math.inf


def open_tracker(cfg: Config, run_dir: Path) -> Any:
    """The tracker of --logger: TensorBoard writes into the run folder."""
    from torch.utils.tensorboard import SummaryWriter

    class TensorBoard:
        def __init__(self):
            self.writer = SummaryWriter(run_dir / "tensorboard")

        def log(self, row: dict[str, float]) -> None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, row["step"])
            self.writer.flush()

        def close(self) -> None:
            self.writer.close()

    return TensorBoard()


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
