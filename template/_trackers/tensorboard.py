"""TensorBoard, beside metrics.csv: each run's event files in runs/<name>/tensorboard/
(`tensorboard --logdir runs`), with each evaluation's metrics and, when the run ends, its
settings in the HPARAMS tab with its final metrics. The run's other files are in its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from .reporting import read_rows
from .runs import flatten

{% if framework == "lightning" %}

def open_tracker(settings: dict[str, Any], run_dir: Path):
    """Lightning's TensorBoardLogger, in the run folder (the same folder on resume: TensorBoard
    reads every event file in it)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)
{% else %}

class Tracker:
    """The calls Lightning's TensorBoardLogger makes: a scalar per metric at its step."""

    def __init__(self, run_dir: Path):
        # The same folder on resume: TensorBoard reads every event file in it.
        self.writer = SummaryWriter(run_dir / "tensorboard")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key != "step":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()


def open_tracker(settings: dict[str, Any], run_dir: Path) -> Tracker:
    return Tracker(run_dir)
{% endif %}


def keep_files(run_dir: Path) -> None:
    """The run's settings in TensorBoard's HPARAMS tab, with its final validation metrics."""
    rows, config = read_rows(run_dir), run_dir / "config.yaml"
    if not rows or not config.is_file():
        return
    flat = flatten(yaml.safe_load(config.read_text(encoding="utf-8")))
    params = {k: v if isinstance(v, int | float | str) else str(v) for k, v in flat.items()}
    metrics = {key: value for key, value in rows[-1].items() if key.startswith("val/")}
    with SummaryWriter(run_dir / "tensorboard") as writer:
        for summary in hparams(params, metrics):
            writer.file_writer.add_summary(summary)
