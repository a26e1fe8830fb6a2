"""Run folders and checkpoints: naming, atomic writes, resuming, and what produced a run.

A run folder, runs/<name>/, holds config.yaml, metrics.csv, baseline.json, curves.png and
checkpoints/last.ckpt and best.ckpt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from .config import TASK, Config, ConfigError, UserError

# Lets the processes that a distributed launch starts share the run folder chosen by rank 0.
RUN_NAME_ENV = f"{__package__.upper()}_RUN_NAME"


def new_run_name() -> str:
    """The run name: given by the parent of a distributed launch, else the date and time."""
    return os.environ.get(RUN_NAME_ENV) or time.strftime("%Y-%m-%d_%H-%M-%S")


def home_of(checkpoint: str | Path) -> Path | None:
    """The run folder that holds a checkpoint (runs/<name>/checkpoints/x.ckpt), if any."""
    path = Path(checkpoint).resolve()
    home = path.parent.parent
    if path.parent.name == "checkpoints" and (home / "config.yaml").is_file():
        return home
    return None


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.ckpt"))


def choose_run_dir(cfg: Config, resume: str | Path | None) -> tuple[Path, bool]:
    """The folder this run writes into, and whether it continues the run already there.

    A resumed checkpoint continues its own run folder, unless --name names another one:
    then a new run starts there from the checkpoint. A folder that exists already is only
    taken when no checkpoint was ever written in it (a run killed before its first one).
    """
    home = home_of(resume) if resume else None
    if home is not None and cfg.train.name in (None, home.name):
        cfg.train.output_dir, cfg.train.name = str(home.parent), home.name
        return home, True
    if resume and cfg.train.name is None:
        raise UserError(
            f"{resume} is not in a run folder (runs/<name>/checkpoints/); "
            "to start a new run from it, add --name NEW"
        )
    cfg.train.name = cfg.train.name or new_run_name()
    if cfg.run_dir.is_file() or has_checkpoint(cfg.run_dir):
        raise UserError(
            f"run folder {cfg.run_dir} exists already; pick another --name, "
            "or continue it with --resume last"
        )
    return cfg.run_dir, False


def prepare_run_dir(run_dir: Path, cfg: Config) -> None:
    """Create the run folder, remove a killed run's temporary files, save the config."""
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(
            f"cannot create the run folder {run_dir}: {error.strerror}; "
            "pick another --output-dir"
        ) from None
    for stale in [*run_dir.glob(".*.tmp"), *(run_dir / "checkpoints").glob(".*.tmp")]:
        stale.unlink(missing_ok=True)
    write_atomically(run_dir / "config.yaml", config_text(cfg))


def config_text(cfg: Config) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


# --- checkpoints -------------------------------------------------------------------------


def find_checkpoint(which: str, output_dir: str | Path = "runs", name: str | None = None) -> Path:
    """'last' or 'best' of run `name` (by default the latest run), or a checkpoint's path."""
    if which not in ("last", "best"):
        path = Path(which)
        if path.is_dir():
            raise UserError(f"checkpoint {path} is a folder; give a .ckpt file inside it")
        if not path.is_file():
            raise UserError(f"checkpoint {path} does not exist")
        return path
    output_dir = Path(output_dir)
    pattern = f"{which}.ckpt" if which == "best" else "*.ckpt"
    runs = [output_dir / name] if name else [p for p in output_dir.glob("*") if p.is_dir()]
    candidates = [
        path
        for run in runs
        for path in (run / "checkpoints").glob(pattern)
        # last: last.ckpt, or a newer one that Lightning wrote on a SLURM requeue signal
        if which == "best" or path.stem == "last" or path.stem.startswith("hpc_ckpt")
    ]
    if not candidates and name and (output_dir / name).is_dir():
        raise UserError(
            f"run {output_dir / name} has no checkpoint yet (it stopped before its first "
            f"evaluation); start it again with --name {name}, without --resume"
        )
    if not candidates:
        where = output_dir / (name or "*")
        raise UserError(
            f"no {where}/checkpoints/{which}.ckpt; train first (a run writes its first "
            "checkpoint at its first evaluation), or give a checkpoint's path"
        )
    return max(candidates, key=lambda path: path.stat().st_mtime)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint of this project (either engine), with a clear error otherwise."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's unpickler comments on files it refuses
            warnings.simplefilter("ignore")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, not a torch file, a pickle of other objects...
        raise UserError(
            f"cannot read checkpoint {path}: not a checkpoint of this project, or a damaged "
            f"one ({type(error).__name__})"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("task") != TASK:
        raise UserError(
            f"{path} is not a checkpoint of this project ({TASK}); "
            "give one from this project's runs/<name>/checkpoints/"
        )
    return checkpoint


def check_resumable(
    checkpoint: dict[str, Any],
    cfg: Config,
    path: str | Path,
    engine: str,
    progress_of: Callable[[dict[str, Any], int], dict[str, Any]],
) -> None:
    """Refuse to resume what cannot continue: another engine, other model settings, a
    finished budget, or a run that stopped early. `progress_of(checkpoint, patience)` gives
    step, epoch and stopped; it reads the engine's own keys, so it is asked only after the
    engine is known to be this one."""
    if checkpoint.get("engine") != engine:
        raise UserError(
            f"{path} was written by the {checkpoint.get('engine')} engine, and this project "
            f"trains with {engine}; it can only be evaluated by the project that wrote it"
        )
    saved = checkpoint["config"]["model"]
    differences = [
        f"model.{key}: {saved.get(key)} -> {value}"
        for key, value in dataclasses.asdict(cfg.model).items()
        if saved.get(key) != value
    ]
    if differences:
        raise ConfigError(
            f"{path} was trained with other model settings ({'; '.join(differences)}); "
            "resume with the settings it was trained with, or start a new run without --resume"
        )
    t = cfg.train
    progress = progress_of(checkpoint, t.patience)
    if progress["step"] >= t.max_steps:
        raise UserError(
            f"{path} has trained its {t.max_steps} steps already; "
            "pass --max-steps with a larger number to train on"
        )
    if t.epochs and progress["epoch"] >= t.epochs:
        raise UserError(
            f"{path} has trained its {t.epochs} epochs already; "
            "pass --epochs with a larger number to train on"
        )
    if progress["stopped"]:
        raise UserError(
            f"{path} stopped early (no better evaluation in {t.patience}); "
            "to train on, resume with --set train.patience=0 (or a larger patience)"
        )


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save into a temporary file beside `path`, then rename it over `path`.

    Beside it, on the same filesystem, the rename is atomic: a process killed at any moment
    leaves the previous file or the new one, never a part of one.
    """
    import torch

    with temporary_beside(path) as tmp, tmp.open("wb") as file:
        writer = RecordingWriter(file)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            # torch reports a failed write (a full disk...) as a RuntimeError about file
            # positions; the OSError underneath says what happened.
            if writer.error is None:
                raise
            raise writer.error from None


class RecordingWriter(io.RawIOBase):
    """A file's writes, remembering the OSError that torch.save would turn into another."""

    def __init__(self, file: BinaryIO):
        self.file, self.error = file, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as error:
            self.error = error
            raise


def write_atomically(path: Path, text: str) -> None:
    with temporary_beside(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, renamed over it on success, removed on failure."""
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created as open() creates files (mode 0o666 less the umask), not 0o600 as
        # tempfile.mkstemp would: the renamed file keeps the mode of the temporary one.
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as error:
        raise UserError(
            f"cannot write {path}: {error.strerror}; pick another --output-dir"
        ) from None
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:  # a full disk, a folder made read-only meanwhile...
        with contextlib.suppress(OSError):  # the next start removes it otherwise
            tmp.unlink(missing_ok=True)
        raise UserError(
            f"cannot write {path}: {error.strerror}; the previous file, if any, is intact "
            "(free some space, or pick another --output-dir)"
        ) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
