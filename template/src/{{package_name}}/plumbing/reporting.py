"""What a run reports, in both engines alike: a line per evaluation, metrics.csv (a row per
evaluation), the trivial baseline, the closing summary and the learning curves.

Rank 0 only.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import Config
from ..model import MONITOR
from . import UserError
from .runs import temporary_beside
from .training import Outcome

# How each stop reason reads, in the summary and in the docs.
STOP_REASONS = {
    "max_steps": "the step budget is spent ({steps} steps)",
    "epochs": "the epoch cap is reached ({epochs} epochs)",
    "early_stopping": "early stopping: {monitor} has not improved for {patience} evaluations",
}


def show(line: str) -> None:
    """Print a line above the progress bar, if there is one."""
    tqdm.write(line)


def describe(row: dict[str, float], max_steps: int) -> str:
    """An evaluation's line: step 200/1000  epoch 13  lr 0.0028  train/loss 0.41  val/..."""
    values = "  ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("step", "epoch"))
    return f"step {row['step']:.0f}/{max_steps}  epoch {row['epoch']:.0f}  {values}"


class MetricsFile:
    """metrics.csv: a row per evaluation, its columns those of the first row (and any new
    key that a later row brings). A resumed run keeps the rows its checkpoint has seen; later
    ones (written after the checkpoint, before an interruption) are made again."""

    def __init__(self, run_dir: Path, resumed_step: int | None):
        self.path = run_dir / "metrics.csv"
        rows = []
        if resumed_step is not None:
            rows = [r for r in read_rows(self.path) if step_of(r) <= resumed_step]
        self.fields: list[str] = list(rows[0]) if rows else []
        self.rewrite(rows)

    def write(self, row: dict[str, Any]) -> None:
        new = [key for key in row if key not in self.fields]
        if new:  # a key logged for the first time: a new column, the old rows left blank
            with self.path.open(newline="", encoding="utf-8") as file:
                rows = list(csv.DictReader(file))
            self.fields += new
            self.rewrite(rows)
        with self.path.open("a", newline="", encoding="utf-8") as file:
            csv.DictWriter(file, fieldnames=self.fields).writerow(row)

    def rewrite(self, rows: list[dict]) -> None:
        # Atomic: a kill while a resumed run trims the file leaves the old rows, not none.
        with (
            temporary_beside(self.path) as tmp,
            tmp.open("w", newline="", encoding="utf-8") as file,
        ):
            if self.fields:
                writer = csv.DictWriter(file, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv (none when it is missing), or one line saying that it
    cannot be continued."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as file:
            return list(csv.DictReader(file))
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(
            f"{path} is not a CSV file of UTF-8 text ({error}): it was edited or damaged; "
            "restore it, or delete it (the run then writes its rows from here on)"
        ) from None


def step_of(row: dict[str, str]) -> float:
    try:
        return float(row["step"])
    except (KeyError, TypeError, ValueError):  # a line cut short by a kill
        return math.inf


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
    with (run_dir / "metrics.csv").open(newline="", encoding="utf-8", errors="replace") as file:
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
