"""k-fold cross-validation: `train --folds K` trains K runs, each holding out one fold of the
data for validation (splits.py), then reports the mean and standard deviation of the folds'
best evaluations.

The runs are runs/<name>/fold-1/ to fold-K/, each a normal run folder whose config holds
its fold; runs/<name>/folds.json holds each fold's best evaluation and the summary. The
same command run again continues: finished folds are kept, an interrupted one resumes from
its last.ckpt.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
from pathlib import Path
from typing import Any

from ..config import Config
from ..engine import train
from ..model import MONITOR, MONITOR_MODE
from . import UserError
from .hardware import global_rank
from .runs import has_checkpoint, new_run_name, write_atomically
from .settings import check

# The processes of a distributed launch run this same command: they train the same folds.
FOLDS_NAME_ENV = f"{__package__.split('.')[0].upper()}_FOLDS_NAME"


def folds_run_name(cfg: Config) -> str:
    """--name, else the name that the launching process chose, else the date and time."""
    return cfg.train.name or os.environ.get(FOLDS_NAME_ENV) or new_run_name()


def train_folds(cfg: Config, folds: int) -> list[str] | None:
    """Train the folds not trained yet; returns the summary's lines on rank 0 (else None)."""
    name = folds_run_name(cfg)
    os.environ[FOLDS_NAME_ENV] = name
    parent = Path(cfg.train.output_dir) / name
    if parent.is_file() or has_checkpoint(parent):
        raise UserError(f"run folder {parent} exists already, without folds; pick another --name")
    path = parent / "folds.json"
    done = {}
    if path.is_file():
        done = {run["fold"]: run for run in json.loads(path.read_text(encoding="utf-8"))["runs"]}
    for fold in range(1, folds + 1):
        if fold in done:
            continue
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.data.folds, fold_cfg.data.fold = folds, fold
        fold_cfg.train.output_dir, fold_cfg.train.name = str(parent), f"fold-{fold}"
        fold_cfg.train.group = fold_cfg.train.group or name
        check(fold_cfg)
        last = fold_cfg.run_dir / "checkpoints" / "last.ckpt"
        outcome = train(fold_cfg, resume=last if last.is_file() else None)
        if outcome is None:
            if global_rank() == 0:  # the parent of a launch: its processes trained the folds
                return None
            continue  # another process of a distributed run
        best = outcome.best
        print(f"fold {fold}/{folds}: {MONITOR} {best[MONITOR]:.4f} (step {best['step']})")
        done[fold] = {"fold": fold, "run": str(fold_cfg.run_dir), "best": best}
        summary = summarize(done, folds)
        write_atomically(path, json.dumps(summary, indent=2))
    if global_rank() != 0:
        return None
    summary = summarize(done, folds)
    lines = []
    for key, mean in summary["mean"].items():
        each = ", ".join(f"{run['best'][key]:.4f}" for run in summary["runs"])
        lines.append(f"{key} over {folds} folds: {mean:.4f} ± {summary['std'][key]:.4f} ({each})")
    return [*lines, f"folds: {path}"]


def summarize(done: dict[int, dict[str, Any]], folds: int) -> dict[str, Any]:
    """The folds' best evaluations, and the mean and (sample) standard deviation of each
    validation metric over them, the monitored one first."""
    runs = [done[fold] for fold in sorted(done)]
    keys = [MONITOR] + [k for k in runs[0]["best"] if k.startswith("val/") and k != MONITOR]
    values = {key: [run["best"][key] for run in runs] for key in keys}
    return {
        "folds": folds,
        "complete": len(runs) == folds,
        "monitor": MONITOR,
        "mode": MONITOR_MODE,
        "mean": {key: statistics.fmean(v) for key, v in values.items()},
        "std": {key: statistics.stdev(v) if len(v) > 1 else 0.0 for key, v in values.items()},
        "runs": runs,
    }
