"""What a run shows, in both engines alike: baseline.json, the summary, curves.png."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from .runs import engine_of, read_checkpoint, temporary_beside


def save_baseline(run_dir: Path, name: str, scores: dict[str, float]) -> None:
    (run_dir / "baseline.json").write_text(json.dumps({"name": name, **scores}, indent=2))


def read_baseline(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "baseline.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def read_lines(run_dir: Path) -> list[dict[str, str]]:
    """metrics.csv's lines, without their blank cells; a line cut short by a kill ends it."""
    path, lines = run_dir / "metrics.csv", []
    if path.is_file():
        with path.open(newline="", encoding="utf-8", errors="replace") as file:
            for line in csv.DictReader(file):
                if None in line.values() or None in line:
                    break
                lines.append({key: value for key, value in line.items() if value})
    return lines


def read_rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv as one row per step, values as numbers (Lightning writes its training
    and validation values on lines of their own)."""
    rows: dict[float, dict[str, float]] = {}
    for line in read_lines(run_dir):
        values = {key: float(value) for key, value in line.items()}
        rows.setdefault(values["step"], {}).update(values)
    return [rows[step] for step in sorted(rows)]


def rows_before(run_dir: Path, checkpoint: dict | None) -> list[dict[str, Any]]:
    """The lines of metrics.csv up to a checkpoint's step (none without a checkpoint): what a
    resumed run keeps; a later line was written after the checkpoint, and comes again."""
    if checkpoint is None:
        return []
    # Lightning numbers the steps of its lines from 0, the raw loop from 1.
    last = checkpoint["global_step"] - (engine_of(checkpoint) == "lightning")
    lines = read_lines(run_dir)
    return [line | {"step": int(line["step"])} for line in lines if int(line["step"]) <= last]


def best_row(rows: list[dict[str, float]], monitor: str, mode: str) -> dict[str, float] | None:
    """The first evaluation with the best monitored value: the one best.ckpt holds."""
    scored = [row for row in rows if math.isfinite(row.get(monitor, math.nan))]
    pick = max if mode == "max" else min
    return pick(scored, key=lambda row: row[monitor], default=None)  # the first of equals


def summary(run_dir: Path, monitor: str, mode: str, reason: str, train: Any) -> list[str]:
    """Why the run stopped (`train` holds its settings) and its best evaluation, beside what
    a model that learned nothing scores: `val/acc 0.9912 (majority class 0.2500)`."""
    best, baseline = best_row(read_rows(run_dir), monitor, mode), read_baseline(run_dir)
    why = f"the step budget is spent ({train.max_steps} steps)"
    if reason == "early_stopping":
        why = f"early stopping: {monitor} has not improved for {train.patience} evaluations"
        threshold, value = train.stopping_threshold, best and best[monitor]
        if threshold is not None and value is not None:
            if value > threshold if mode == "max" else value < threshold:
                why = f"early stopping: {monitor} is past its stopping threshold ({threshold})"
    lines = [f"stopped: {why}"]
    if best is not None:

        def shown(key: str) -> str:
            beside = f" ({baseline['name']} {baseline[key]:.4f})" if key in baseline else ""
            return f"{key} {best[key]:.4f}{beside}"

        saved = run_dir / "checkpoints" / "best.ckpt"
        step = read_checkpoint(saved)["global_step"] if saved.is_file() else int(best["step"])
        scores = "  ".join(shown(key) for key in best if key.startswith("val/"))
        lines.append(f"best (step {step}, best.ckpt): {scores}")
    return [*lines, f"run folder: {run_dir}"]


def plot_curves(run_dir: Path, monitor: str, mode: str) -> None:
    """curves.png: the losses, each validation metric and the learning rate over the steps,
    the trivial baseline dashed, and the best evaluation (best.ckpt) circled."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    rows, baseline = read_rows(run_dir), read_baseline(run_dir)
    best = best_row(rows, monitor, mode)
    if best is None:
        return
    keys = list(dict.fromkeys(key for row in rows for key in row if key not in ("step", "epoch")))
    panels = [[k for k in keys if k.endswith("loss")], [k for k in keys if k.startswith("lr")]]
    panels[1:1] = [[k] for k in keys if k.startswith("val/") and not k.endswith("loss")]
    panels = [panel for panel in panels if panel]  # Lightning logs no lr in a very short run
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=True):
        for key in panel:
            logged = [row for row in rows if key in row]
            (line,) = ax.plot(
                [row["step"] for row in logged], [row[key] for row in logged], ".-", label=key
            )
            colour = line.get_color()
            if key in best:
                ax.plot(best["step"], best[key], "o", markerfacecolor="none", color=colour)
            if key in baseline:
                name = f"{key}, {baseline['name']}"
                ax.axhline(baseline[key], color=colour, linestyle="--", linewidth=1, label=name)
        ax.set(title=" and ".join(panel), xlabel="step")
        ax.set_yscale("log" if "lr" in panel[0] else "linear")
        ax.legend(fontsize="small")
    figure.suptitle(f"{run_dir.name}: {monitor} best at step {best['step']:.0f} (best.ckpt)")
    figure.tight_layout()
    with temporary_beside(run_dir / "curves.png") as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
