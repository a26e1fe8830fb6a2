"""What every tracker gets, in both engines (the raw engine's trackers in tracking.py,
Lightning's loggers in lightning_parts.py): the config as its parameters, tags that say what
the run is, the best evaluation as `best/<metric>` (logged at each better evaluation, so that
the run's latest value of each is the best one), and, when the run ends, its files:
config.yaml, metrics.csv, curves.png and record.json (and best.ckpt with
`train.log_checkpoint`). TensorBoard gets the parameters as hyperparameters (its HPARAMS
tab), with the best metrics.

Rank 0 only. Each tracker's library is imported only when a run uses it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..config import PROJECT, TASK, Config
from . import ConfigError, UserError
from .runs import flatten

RUN_FILES = ("config.yaml", "metrics.csv", "curves.png", "record.json")


def params(cfg: Config) -> dict[str, Any]:
    """The config as flat parameters, "train.lr": 0.003, in the types trackers take."""
    return {
        key: value if isinstance(value, bool | int | float | str) else str(value)
        for key, value in flatten(cfg.to_dict()).items()
    }


def tags(cfg: Config, run_dir: Path, framework: str, record: dict | None) -> dict[str, str]:
    """What the run is: task, framework, run folder, the command and the git commit."""
    record = record or {}
    found = {
        "task": TASK,
        "framework": framework,
        "run_folder": str(run_dir),
        "command": str(record.get("command", "")),
        "commit": str(record.get("commit") or "none"),
    }
    if record.get("dirty"):
        found["commit"] += " (uncommitted changes: git.diff in the run folder)"
    if cfg.train.group:
        found["group"] = cfg.train.group
    return found


def best_metrics(best: dict[str, float]) -> dict[str, float]:
    """The best evaluation's validation metrics and step, as best/val/acc, best/step..."""
    found = {f"best/{key}": value for key, value in best.items() if key.startswith("val/")}
    return found | {"best/step": best["step"]}


def run_files(cfg: Config, run_dir: Path) -> list[Path]:
    """The run's files that its tracker keeps, those that exist."""
    names = [*RUN_FILES, *(["checkpoints/best.ckpt"] if cfg.train.log_checkpoint else [])]
    return [run_dir / name for name in names if (run_dir / name).is_file()]


# --- MLflow ------------------------------------------------------------------------------


def mlflow_uri(cfg: Config) -> str:
    """train.tracking_uri, else MLFLOW_TRACKING_URI, else the SQLite file ./mlflow.db."""
    return cfg.train.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")


def mlflow_experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)


def quiet_mlflow() -> None:
    """No INFO lines when MLflow creates or upgrades its SQLite store (MLflow's and alembic's)."""
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def mlflow_experiment(client: Any, name: str) -> str:
    """The experiment's id; made when it does not exist yet."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # made meanwhile by another process (a sweep's other worker)
        return client.get_experiment_by_name(name).experiment_id


def mlflow_tags(found: dict[str, str]) -> dict[str, str]:
    """The tags, and MLflow's own names for the command and the commit (its UI shows them)."""
    found = found | {"mlflow.source.name": found["command"]}
    if found["commit"] != "none":
        found["mlflow.source.git.commit"] = found["commit"].split()[0]
    return found


def mlflow_upload(client: Any, run_id: str, files: list[Path]) -> None:
    for path in files:
        folder = path.parent.name if path.parent.name == "checkpoints" else None
        client.log_artifact(run_id, str(path), artifact_path=folder)


# --- Weights & Biases ----------------------------------------------------------------------


WANDB_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")  # W&B's own


def wandb_mode() -> str:
    """W&B's mode: WANDB_MODE, checked; else online when credentials are found (without
    asking or checking them), offline when none are."""
    import wandb

    mode = os.environ.get("WANDB_MODE")
    if mode is None:
        return "online" if wandb.login(prompt=False, verify=False) else "offline"
    if mode not in WANDB_MODES:
        raise ConfigError(
            f"WANDB_MODE={mode} is not a mode of W&B: set it to online, offline or disabled, "
            "or unset it (online when logged in, else offline)"
        )
    if mode in ("online", "run", "shared") and not wandb.login(prompt=False, verify=False):
        raise UserError(
            f"WANDB_MODE={mode}, but no W&B API key is set up here: run `wandb login` (or "
            "set WANDB_API_KEY), or set WANDB_MODE=offline (`wandb sync` uploads it later)"
        )
    return mode


def wandb_failed(mode: str, error: Exception) -> str:
    """What W&B's failure to start a run says, in one line."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return (
        f"W&B could not start its run ({mode}): {lines[0]}; check `wandb login` and the "
        "network, or set WANDB_MODE=offline (`wandb sync` uploads it later)"
    )


def wandb_config(cfg: Config, found: dict[str, str]) -> dict[str, Any]:
    """The config, and what the run is under "run" (W&B's tags are the task and framework)."""
    return cfg.to_dict() | {"run": found}


def wandb_upload(run: Any, files: list[Path]) -> None:
    """The files as one artifact of the run, `run-<id>` (kept offline, uploaded by sync)."""
    import wandb

    artifact = wandb.Artifact(f"run-{run.id}", type="run")
    for path in files:
        name = f"checkpoints/{path.name}" if path.parent.name == "checkpoints" else path.name
        artifact.add_file(str(path), name=name)
    run.log_artifact(artifact)


# --- TensorBoard ---------------------------------------------------------------------------


def tensorboard_hparams(writer: Any, cfg: Config, best: dict[str, float]) -> None:
    """The parameters and the best metrics in TensorBoard's HPARAMS tab; the metrics' values
    are the scalars best/... of the same folder."""
    from torch.utils.tensorboard.summary import hparams

    for summary in hparams(params(cfg), best_metrics(best)):
        writer.file_writer.add_summary(summary)
    writer.flush()
