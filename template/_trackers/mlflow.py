"""MLflow, beside metrics.csv: each run an MLflow run, in the experiment named after the
project (MLFLOW_EXPERIMENT_NAME changes it) of the store that MLFLOW_TRACKING_URI names: a
server (http://host:5000), else the SQLite file mlflow.db here. It gets the settings as
parameters, each evaluation's metrics and, when the run ends, the run's files and how it
ended. A resumed run continues its MLflow run, whose id is kept in the run folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
{% if framework == "raw" %}
import time
{% endif %}
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .runs import PACKAGE, flatten{{ ", global_rank" if framework == "lightning" }}

ID_FILE = "mlflow-run.txt"  # in the run folder
FILES = ("config.yaml", "metrics.csv", "curves.png", "record.json")
# How a run ended, by the exception that ended it (none: FINISHED).
ENDINGS = {"Interrupted": "KILLED", "KeyboardInterrupt": "KILLED"}
for name in ("alembic", "mlflow.store.db.utils"):  # quiet when MLflow makes its SQLite store
    logging.getLogger(name).setLevel(logging.WARNING)


def client() -> MlflowClient:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    database = uri.removeprefix("sqlite:///")
    # A new SQLite store gets its tables from its first client: from one process at a time
    # (two sweep workers started at once would both make them, and one fail).
    with FileLock(f"{database}.lock") if database != uri else contextlib.nullcontext():
        return MlflowClient(uri)


def experiment(mlflow: MlflowClient) -> str:
    """The experiment's id; made if missing (by one of the workers of a sweep started at once)."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PACKAGE)
    try:
        found = mlflow.get_experiment_by_name(name)
        return found.experiment_id if found else mlflow.create_experiment(name)
    except MlflowException:  # made meanwhile by another process
        return mlflow.get_experiment_by_name(name).experiment_id


def tags(run_dir: Path) -> dict[str, str]:
    """The run folder, and the group of a sweep's trial or of a fold (its parent's name)."""
    found = {"run_folder": str(run_dir)}
    if re.fullmatch(r"(trial|fold)-\d+", run_dir.name):
        found["group"] = run_dir.parent.name
    return found

{% if framework == "lightning" %}

def open_tracker(settings: dict[str, Any], run_dir: Path):
    """Lightning's MLFlowLogger, continuing the run folder's MLflow run if it has one."""
    from lightning.pytorch.loggers import MLFlowLogger

    path, mlflow = run_dir / ID_FILE, client()
    run_id = path.read_text().strip() if path.is_file() else None
    if global_rank() == 0 and run_id is None:
        experiment(mlflow)  # made here: MLFlowLogger fails when another worker makes it too
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PACKAGE)
    logger = MLFlowLogger(name, run_dir.name, mlflow.tracking_uri, tags(run_dir), run_id=run_id)
    if global_rank() == 0 and run_id is None:  # a new MLflow run: its parameters, its id
        logger.log_hyperparams(flatten(settings))
        path.write_text(logger.run_id)
    elif global_rank() == 0:
        mlflow.update_run(run_id, status="RUNNING")
    return logger
{% else %}

class Tracker:
    """The calls Lightning's MLFlowLogger makes: a run, its parameters, then the metrics of
    each evaluation in a batch."""

    def __init__(self, settings: dict[str, Any], run_dir: Path):
        from mlflow.entities import Param

        path, self.mlflow = run_dir / ID_FILE, client()
        if path.is_file():  # a resumed run: its MLflow run, parameters logged already
            self.run_id = path.read_text().strip()
            self.mlflow.update_run(self.run_id, status="RUNNING")
            return
        found = {"tags": tags(run_dir), "run_name": run_dir.name}
        self.run_id = self.mlflow.create_run(experiment(self.mlflow), **found).info.run_id
        params = [Param(key, str(value)) for key, value in flatten(settings).items()]
        self.mlflow.log_batch(self.run_id, params=params)
        path.write_text(self.run_id)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"]
        self.mlflow.log_batch(self.run_id, metrics=values)


def open_tracker(settings: dict[str, Any], run_dir: Path) -> Tracker:
    return Tracker(settings, run_dir)
{% endif %}


def keep_files(run_dir: Path) -> None:
    """The run's files into its MLflow run, and how it ended (killed or failed while an
    exception is on its way out)."""
    path, mlflow = run_dir / ID_FILE, client()
    if not path.is_file():
        return
    run_id = path.read_text().strip()
    for name in FILES:
        if (run_dir / name).is_file():
            mlflow.log_artifact(run_id, str(run_dir / name))
    error = sys.exc_info()[1]
    ended = "FINISHED" if error is None else ENDINGS.get(type(error).__name__, "FAILED")
    mlflow.set_terminated(run_id, ended)
