"""What a run reports, in both engines alike: a line per evaluation, metrics.csv (a row per
evaluation), the trivial baseline, the closing summary and the learning curves.

Rank 0 only.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import gc
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from ..config import Config
from ..model import MONITOR
from . import UserError
from .runs import temporary_beside
from .training import Outcome, better

# How each stop reason reads, in the summary and in the docs.
STOP_REASONS = {
    "max_steps": "the step budget is spent ({steps} steps)",
    "epochs": "the epoch cap is reached ({epochs} epochs)",
    "early_stopping": "early stopping: {monitor} has not improved for {patience} evaluations",
    "perfect": "done: {monitor} is perfect, and the validation loss fell by less than "
    "{tie_delta} since the best evaluation",
}


QUIET = contextvars.ContextVar("quiet", default=False)


def show(line: str) -> None:
    """Print a line above the progress bar, if there is one (not within `quiet()`)."""
    if not QUIET.get():
        tqdm.write(line)


@contextlib.contextmanager
def quiet(on: bool = True) -> Iterator[None]:
    """No lines from show() within: a sweep's trials print one line each, at their end."""
    token = QUIET.set(on)
    try:
        yield
    finally:
        QUIET.reset(token)


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
        steps=steps, epochs=t.epochs, monitor=MONITOR, patience=t.patience, tie_delta=t.tie_delta
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


def plot_learning_curves(run_dir: Path) -> Path | None:
    """curves.png, from metrics.csv: a panel for the losses and one for each other metric
    (each on its own axis; a log scale where the values span more than a decade), the
    trivial baseline as a dashed line, the best evaluation (best.ckpt) marked, and the
    learning rate. None when metrics.csv has no row yet."""
    needed = ("step", MONITOR, "val/loss")
    rows = [r for r in numeric_rows(run_dir / "metrics.csv") if None not in map(r.get, needed)]
    if not rows:
        return None
    with garbage_collection_paused():
        return draw_curves(run_dir, rows)


def draw_curves(run_dir: Path, rows: list[dict[str, float | None]]) -> Path:
    """The figure of plot_learning_curves, from metrics.csv's rows."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    curves: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "epoch") and value is not None:
                steps, values = curves.setdefault(key, ([], []))
                steps.append(row["step"])
                values.append(value)
    baseline = read_baseline(run_dir)
    best: dict[str, float] = {}
    delta = tie_delta(run_dir)
    for row in rows:  # as training chose best.ckpt
        if better(row, best, delta):
            best = row
    panels = [[key for key in curves if key.endswith("loss")]]
    panels += [[key] for key in curves if not key.endswith("loss") and key != "lr"]
    panels += [["lr"]] if "lr" in curves else []
    columns = min(3, len(panels))
    lines = -(-len(panels) // columns)
    width, height = 4.5 * columns, 3.4 * lines
    figure, axes = plt.subplots(lines, columns, figsize=(width, height), squeeze=False)
    # Fixed margins, in inches, for the tick labels and titles: tight_layout would draw the
    # figure once more to measure them, doubling the plot's time.
    left, right, bottom, top, gap = 0.75, 0.2, 0.55, 0.65, 0.9
    panel_width = (width - left - right - (columns - 1) * gap) / columns
    panel_height = (height - bottom - top - (lines - 1) * gap) / lines
    figure.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=gap / panel_width,
        hspace=gap / panel_height,
    )
    for ax, keys in zip(axes.flat, panels, strict=False):
        shown = []
        for key in keys:
            steps, values = curves[key]
            (line,) = ax.plot(steps, values, marker=".", markersize=4, label=key)
            shown += values
            if key in best:
                ax.plot(
                    best["step"],
                    best[key],
                    "o",
                    color=line.get_color(),
                    markersize=8,
                    markerfacecolor="none",
                )
            if isinstance(baseline.get(key), int | float):
                ax.axhline(
                    baseline[key],
                    color=line.get_color(),
                    linestyle="--",
                    linewidth=1,
                    label=f"{key}, {baseline['name']}",
                )
                shown.append(baseline[key])
        ax.axvline(
            best["step"],
            color="grey",
            linestyle=":",
            linewidth=1,
            label=f"best.ckpt (step {best['step']:.0f})",
        )
        if spans_decades(shown):
            ax.set_yscale("log")
        title = "learning rate" if keys == ["lr"] else " and ".join(keys)
        ax.set(title=title, xlabel="step")
        ax.legend(fontsize="small")
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(f"{run_dir.name}: {MONITOR} best at step {best['step']:.0f}")
    path = run_dir / "curves.png"
    with temporary_beside(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


@contextlib.contextmanager
def garbage_collection_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for a while: a figure makes tens of thousands
    of objects, and each collection they trigger walks the whole training process's heap,
    which doubled the plot's time at the end of a run. The figure's cycles go at the next
    collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def tie_delta(run_dir: Path) -> float:
    """The run's train.tie_delta, from its config.yaml."""
    path = run_dir / "config.yaml"
    settings = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
    return float(settings.get("train", {}).get("tie_delta", 0.0))


def spans_decades(values: list[float]) -> bool:
    """Whether positive values span more than a factor of ten: a log scale shows them."""
    finite = [value for value in values if math.isfinite(value)]
    return bool(finite) and min(finite) > 0 and max(finite) > 10 * min(finite)


def numeric_rows(path: Path) -> list[dict[str, float | None]]:
    """metrics.csv's rows, their values as numbers (None where blank), for plots: a
    damaged file plots as far as it reads."""
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8", errors="replace") as file:
        rows = []
        for row in csv.DictReader(file):
            try:
                rows.append({k: float(v) if v not in ("", None) else None for k, v in row.items()})
            except (TypeError, ValueError):  # a line cut short by a kill
                break
        return rows
