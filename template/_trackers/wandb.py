"""Weights & Biases, beside metrics.csv: each run a W&B run of the project named after this
one (WANDB_PROJECT changes it), online once you are logged in (`wandb login`), else offline
in runs/<name>/wandb/ (`wandb sync` uploads it later); WANDB_MODE overrides. It gets the
settings as its config, each evaluation's metrics and, when the run ends, the run's files as
an artifact. A resumed run continues its W&B run, whose id is kept in the run folder.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import wandb

from .runs import PACKAGE, global_rank

ID_FILE = "wandb-run.txt"  # in the run folder
FILES = ("config.yaml", "metrics.csv", "curves.png", "record.json")


def init_args(settings: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """wandb.init's arguments: the run folder's W&B run, the group of a sweep's trial or of a
    fold (its parent's name), and the mode."""
    path = run_dir / ID_FILE
    run_id = path.read_text().strip() if path.is_file() else secrets.token_hex(4)
    if global_rank() == 0:
        path.write_text(run_id)
    mode = os.environ.get("WANDB_MODE")
    if mode is None:  # credentials found (not checked: no network needed), else offline
        mode = "online" if wandb.login(prompt=False, verify=False) else "offline"
    group = run_dir.parent.name if re.fullmatch(r"(trial|fold)-\d+", run_dir.name) else None
    project = os.environ.get("WANDB_PROJECT", PACKAGE)
    found = {"project": project, "name": run_dir.name, "group": group, "config": settings}
    return found | {"id": run_id, "resume": "allow", "mode": mode}

{% if framework == "lightning" %}

def open_tracker(settings: dict[str, Any], run_dir: Path):
    """Lightning's WandbLogger, its files in the run folder."""
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(save_dir=run_dir, **init_args(settings, run_dir))
{% else %}

class Tracker:
    """The calls Lightning's WandbLogger makes: wandb.init, then run.log an evaluation."""

    def __init__(self, settings: dict[str, Any], run_dir: Path):
        self.run = wandb.init(dir=run_dir, **init_args(settings, run_dir))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.run.log({key: value for key, value in metrics.items() if key != "step"}, step=step)


def open_tracker(settings: dict[str, Any], run_dir: Path) -> Tracker:
    return Tracker(settings, run_dir)
{% endif %}


def keep_files(run_dir: Path) -> None:
    """The run's files, as an artifact of its W&B run, which then ends (with exit code 1
    while an exception is on its way out)."""
    run = wandb.run
    if run is None:
        return
    artifact = wandb.Artifact(f"run-{run.id}", type="run")
    for name in FILES:
        if (run_dir / name).is_file():
            artifact.add_file(str(run_dir / name))
    run.log_artifact(artifact)
    run.finish(exit_code=int(sys.exc_info()[1] is not None))
