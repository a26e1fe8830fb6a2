"""k-fold cross-validation: `train --folds K` trains K runs, each holding out one fold of the
data for validation (splits.py), then reports the mean and standard deviation of the folds'
best evaluations.

The runs are runs/<name>/fold-1/ to fold-K/, each a normal run folder whose config holds
its fold; runs/<name>/folds.json holds each fold's best evaluation and the summary. The
same command run again continues: finished folds are kept, an interrupted one resumes from
its last.ckpt.
"""

from __future__ import annotations

import contextlib
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
from .runs import (
    CHANGEABLE_ON_RESUME,
    RUN_NAME_ENV,
    RunClaim,
    check_output_dir,
    flatten,
    has_checkpoint,
    new_run_name,
    write_atomically,
)
from .settings import check

# The processes of a distributed launch run this same command: they train the same folds.
FOLDS_NAME_ENV = f"{__package__.split('.')[0].upper()}_FOLDS_NAME"
# Settings that may differ when the same --folds command runs again: those a resume may
# change, and the hold-out share, which folds do not use.
NOT_THE_SPLIT = {*CHANGEABLE_ON_RESUME, "data.val_split"}


def folds_run_name(cfg: Config) -> str:
    """--name, else the name that the launching process chose, else the date and time."""
    return cfg.train.name or os.environ.get(FOLDS_NAME_ENV) or new_run_name()


def train_folds(cfg: Config, folds: int) -> list[str] | None:
    """Train the folds not trained yet; returns the summary's lines on rank 0 (else None)."""
    name = folds_run_name(cfg)
    os.environ[FOLDS_NAME_ENV] = name
    check_output_dir(cfg.train.output_dir)
    parent = Path(cfg.train.output_dir) / name
    if parent.is_file() or has_checkpoint(parent):
        raise UserError(f"run folder {parent} exists already, without folds; pick another --name")
    # The process that was started holds the folds' claim (not the processes of a launch).
    claims = global_rank() == 0 and RUN_NAME_ENV not in os.environ
    with RunClaim(parent, new_run=False) if claims else contextlib.nullcontext():
        return train_each_fold(cfg, folds, parent)


def train_each_fold(cfg: Config, folds: int, parent: Path) -> list[str] | None:
    path = parent / "folds.json"
    done = {run["fold"]: run for run in read_folds(path, cfg, folds)}
    for fold in range(1, folds + 1):
        if fold in done:
            continue
        fold_cfg = copy.deepcopy(cfg)
        fold_cfg.data.folds, fold_cfg.data.fold = folds, fold
        fold_cfg.train.output_dir, fold_cfg.train.name = str(parent), f"fold-{fold}"
        fold_cfg.train.group = fold_cfg.train.group or parent.name
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
        write_atomically(path, json.dumps(summarize(done, folds, cfg), indent=2))
    if global_rank() != 0:
        return None
    summary = summarize(done, folds, cfg)
    lines = []
    for key, mean in summary["mean"].items():
        each = ", ".join(f"{run['best'][key]:.4f}" for run in summary["runs"])
        lines.append(f"{key} over {folds} folds: {mean:.4f} ± {summary['std'][key]:.4f} ({each})")
    return [*lines, f"folds: {path}"]


def read_folds(path: Path, cfg: Config, folds: int) -> list[dict[str, Any]]:
    """The finished folds that folds.json records, when they are folds of this split: the
    same K and the same settings (but those a resume may change); else a refusal."""
    if not path.is_file():
        return []
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
        runs, held = summary["runs"], summary["folds"]
        assert isinstance(held, int) and all(isinstance(run["fold"], int) for run in runs)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise UserError(
            f"{path} is damaged (not the JSON that --folds writes); restore it, or train the "
            "folds under another --name"
        ) from None
    again = f"--folds {held} to continue them, or another --name for a new split"
    if held != folds:
        raise UserError(
            f"{path.parent} holds the folds of a {held}-fold split; --folds {folds} there "
            f"would mix two splits: give {again}"
        )
    saved = flatten(summary.get("config") or {})
    differing = [
        f"{key}: {saved[key]} -> {value}"
        for key, value in flatten(cfg.to_dict()).items()
        if key in saved and saved[key] != value and key not in NOT_THE_SPLIT
    ]
    if differing:
        raise UserError(
            f"{path.parent} holds folds trained with other settings ({'; '.join(differing)}); "
            f"give the same settings with {again}"
        )
    return runs


def summarize(done: dict[int, dict[str, Any]], folds: int, cfg: Config) -> dict[str, Any]:
    """The folds' best evaluations, and the mean and (sample) standard deviation of each
    validation metric over them, the monitored one first; and the settings of the split."""
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
        "config": cfg.to_dict(),
    }
