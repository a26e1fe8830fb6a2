"""Run folders and checkpoints: naming and claiming a folder, atomic writes, reading either
engine's checkpoints, and what may change when a run resumes.

A run folder, runs/<name>/, holds config.yaml, metrics.csv, baseline.json, curves.png,
record.json and checkpoints/last.ckpt and best.ckpt. While a process trains in it, it holds
the folder's claim (.claim), so that a second run of the same name is refused.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..config import TASK, Config
from . import ConfigError, UserError
from .settings import config_text, load_config

# Lets the processes that a distributed launch starts share the run folder chosen by rank 0.
RUN_NAME_ENV = f"{__package__.split('.')[0].upper()}_RUN_NAME"
# Settings a resumed run may change; any other change is refused, naming the setting.
CHANGEABLE_ON_RESUME = {
    "data.path",  # the same data, moved
    *(
        f"train.{key}"
        for key in (
            "max_steps epochs lr weight_decay grad_clip patience tie_delta eval_every accelerator "
            "devices num_nodes precision compile num_workers logger tracking_uri group "
            "log_checkpoint output_dir name"
        ).split()
    ),
}


def new_run_name() -> str:
    """The run name: given by the parent of a distributed launch, else the date and time."""
    return os.environ.get(RUN_NAME_ENV) or time.strftime("%Y-%m-%d_%H-%M-%S")


# What a run folder holds besides checkpoints/: any one of them makes it one (a user may
# have deleted or moved the others; the checkpoint holds the config, which a resume rewrites).
RUN_FOLDER_FILES = ("config.yaml", "metrics.csv", "record.json", "baseline.json")


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """The run folder that holds a checkpoint (runs/<name>/checkpoints/x.ckpt), if any:
    relative to the working directory when the checkpoint's path is, as a new run's is."""
    path = Path(checkpoint)
    folder = path.resolve().parent.parent
    if path.resolve().parent.name != "checkpoints" or not any(
        (folder / name).is_file() for name in RUN_FOLDER_FILES
    ):
        return None
    if path.is_absolute():
        return folder
    with contextlib.suppress(ValueError):  # on another drive (Windows): absolute
        return Path(os.path.relpath(folder))
    return folder


def has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("*.ckpt"))


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse a path that goes through a missing folder ('out/nosuch/../x'): creating it
    would leave that folder behind."""
    path = Path(output_dir)
    for i, part in enumerate(path.parts):
        above = Path(*path.parts[:i])
        if part == ".." and not above.is_dir():
            raise UserError(
                f"--output-dir {output_dir} goes through {above}, which does not exist; "
                "give a path without it"
            )


def choose_run_dir(cfg: Config, resume: str | Path | None) -> tuple[Path, bool]:
    """The folder this run writes into, and whether it continues the run already there.

    A resumed checkpoint continues its own run folder, unless --name names another one:
    then a new run starts there from the checkpoint. A folder that exists already is only
    taken when no checkpoint was ever written in it (a run killed before its first one).
    """
    check_output_dir(cfg.train.output_dir)
    folder = run_folder_of(resume) if resume else None
    if folder is not None and cfg.train.name in (None, folder.name):
        cfg.train.output_dir, cfg.train.name = str(folder.parent), folder.name
        return folder, True
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


class RunClaim:
    """The claim of a run folder: an operating-system lock on runs/<name>/.claim, held by
    the process that trains there (and released when it ends, however it ends: kill -9
    too), which names that process, so that a second run of the same name is refused."""

    def __init__(self, run_dir: Path, new_run: bool):
        self.path = run_dir / ".claim"
        self.new_run = new_run  # then a checkpoint there means another run took the folder
        self.file: Any = None
        self.made: list[Path] = []  # folders made for the claim, removed again if left empty

    def __enter__(self) -> RunClaim:
        folder = self.path.parent.absolute()
        self.made = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            file = self.path.open("a+", encoding="utf-8")
        except OSError as error:
            raise UserError(
                f"cannot create the run folder {self.path.parent}: {error.strerror}; "
                "pick another --output-dir"
            ) from None
        if not lock(file):
            file.seek(0)
            holder = file.read().strip() or "another process"
            file.close()
            self.made = []
            raise UserError(
                f"run folder {self.path.parent} is in use by {holder}; wait for it to end, "
                "or pick another --name"
            )
        if self.new_run and has_checkpoint(self.path.parent):  # finished while we looked
            file.close()
            self.made = []
            raise UserError(
                f"run folder {self.path.parent} exists already; pick another --name, "
                "or continue it with --resume last"
            )
        file.seek(0)
        stale = file.read().strip()
        if stale:  # written by a process that ended without releasing it
            print(f"note: taking over {self.path.parent} from {stale}, which has ended")
        file.seek(0)
        file.truncate()
        file.write(f"process {os.getpid()} on {socket.gethostname()} ({time.strftime('%X')})")
        file.flush()
        self.file = file
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.file.close()  # releases the lock
            self.file = None
        for folder in self.made:  # a run that failed before writing anything leaves nothing
            with contextlib.suppress(OSError):
                folder.rmdir()


def lock(file: Any) -> bool:
    """An exclusive lock on an open file, without waiting: whether it was taken."""
    try:
        if sys.platform == "win32":
            import msvcrt

            msvcrt.locking(file.fileno(), msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def check_continuable(run_dir: Path) -> None:
    """Before a run continues in its folder: its record.json and metrics.csv can be read and
    continued (else one line naming the file, and nothing written)."""
    from .record import read_record
    from .reporting import read_rows

    if (run_dir / "record.json").is_file():
        read_record(run_dir / "record.json")
    read_rows(run_dir / "metrics.csv")


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
    """A checkpoint of this project (either engine), checked, with a clear error otherwise.

    Both engines write the settings and metadata as `hyper_parameters` (`cfg`, `meta`: what
    rebuilds the model), their progress (`progress`: step, epoch, evaluations) and the model's
    weights: `model` (plain PyTorch) or Lightning's `state_dict` (the weights as `model.*`).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():  # torch's unpickler comments on files it refuses
            warnings.simplefilter("ignore")
            # Tensors and plain values only: loading runs no code from the file.
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
    settings = checkpoint.get("hyper_parameters")
    progress = checkpoint.get("progress")
    well_formed = (
        checkpoint.get("engine") in ("raw", "lightning")
        and isinstance(settings, dict)
        and isinstance(settings.get("cfg"), dict)
        and isinstance(settings.get("meta"), dict)
        and all(isinstance(settings["cfg"].get(key), dict) for key in ("data", "model", "train"))
        and isinstance(progress, dict)
        and isinstance(progress.get("step"), int)
        and isinstance(checkpoint.get("model", checkpoint.get("state_dict")), dict)
    )
    if not well_formed:
        raise UserError(
            f"{path} lacks parts of a checkpoint of this project (settings, progress or "
            "weights): it was edited or damaged; use another one from checkpoints/"
        )
    return checkpoint


def checkpoint_config(checkpoint: dict[str, Any], path: str | Path) -> Config:
    """The config a checkpoint was trained with, checked as any config is."""
    try:
        return load_config(base=checkpoint["hyper_parameters"]["cfg"])
    except ConfigError as error:
        raise UserError(f"{path} holds a config that is not valid here: {error}") from None


def model_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's weights, named as in model.py, from either engine's checkpoint."""
    if "model" in checkpoint:
        return checkpoint["model"]
    weights = checkpoint["state_dict"]
    return {
        key[len("model.") :]: value for key, value in weights.items() if key.startswith("model.")
    }


@contextlib.contextmanager
def rebuilding_from(path: str | Path) -> Iterator[None]:
    """Rebuilding the data, the model or its metrics from a checkpoint's settings and
    metadata: a key or value missing there (a checkpoint edited by hand) is one line."""
    try:
        yield
    except (KeyError, TypeError, IndexError) as error:
        raise UserError(
            f"{path}: its settings or metadata cannot rebuild the model and its data "
            f"({type(error).__name__}: {error}); the checkpoint was edited or damaged: use "
            "another one from checkpoints/"
        ) from None


def load_weights(model: Any, weights: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's weights into the model its settings describe, or say in one line
    that they do not fit it (a setting edited in the checkpoint: another width...)."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1].strip()
        raise UserError(
            f"{path}: its weights do not fit the model its own settings describe ({first}); "
            "the checkpoint was edited or damaged: use another one from checkpoints/"
        ) from None


def load_model(path: str | Path) -> tuple[Any, Config, dict]:
    """The trained model of a checkpoint of either engine (in eval mode, on the CPU), its
    config and its metadata: what evaluate, predict and export need."""
    from ..model import build_model

    checkpoint = read_checkpoint(path)
    cfg = checkpoint_config(checkpoint, path)
    meta = checkpoint["hyper_parameters"]["meta"]
    try:
        model = build_model(cfg, meta)
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise UserError(
            f"{path}: its metadata cannot rebuild the model ({type(error).__name__}: {error}); "
            "the checkpoint was edited or damaged"
        ) from None
    load_weights(model, model_weights(checkpoint), path)
    return model.eval(), cfg, meta


def evaluate_checkpoint(
    path: str | Path, data: str | Path | None = None, accelerator: str = "auto"
) -> dict[str, float]:
    """A checkpoint's metrics (either engine's) on the validation split it was trained with,
    or on `data`."""
    from ..data import build_datasets, load_dataset
    from ..model import build_metrics
    from .hardware import resolve_device
    from .training import evaluate_model, make_loader

    model, cfg, meta = load_model(path)
    device = resolve_device(accelerator)
    with rebuilding_from(path):
        if data is None:
            _, dataset, _ = build_datasets(cfg, meta)
        else:
            dataset = load_dataset(data, cfg, meta)
        metrics = build_metrics(meta).to(device)
    loader = make_loader(dataset, cfg, 0, 1, device, train=False)
    return evaluate_model(model.to(device), loader, metrics, device)


def check_resumable(
    checkpoint: dict[str, Any], cfg: Config, path: str | Path, engine: str
) -> None:
    """Refuse to resume what cannot continue: another engine, a setting that cannot change
    mid-run, a finished budget, or a run that stopped early."""
    if checkpoint["engine"] != engine:
        raise UserError(
            f"{path} was written by the {checkpoint['engine']} engine, and this project trains "
            f"with {engine}: evaluate, predict and export read it, but only the {checkpoint['engine']}"
            " engine can resume its training (their optimizer and loop states differ)"
        )
    saved = flatten(checkpoint["hyper_parameters"]["cfg"])
    changed = [
        f"{key}: {saved.get(key)} -> {value}"
        for key, value in flatten(cfg.to_dict()).items()
        if saved.get(key) != value and key not in CHANGEABLE_ON_RESUME
    ]
    if any(change.startswith("model.") for change in changed):
        raise ConfigError(
            f"{path} was trained with other model settings ({'; '.join(changed)}); "
            "resume with the settings it was trained with, or start a new run without --resume"
        )
    if changed:
        raise ConfigError(
            f"{'; '.join(changed)}: cannot change when a run resumes (they decide its data, "
            "batches or schedule); start a new run without --resume to change them"
        )
    t, progress = cfg.train, checkpoint["progress"]
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
    if t.patience and progress["bad_evals"] >= t.patience:
        raise UserError(
            f"{path} stopped early (no better evaluation in {t.patience}); "
            "to train on, resume with train.patience=0 (or a larger patience)"
        )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}: the config's settings by their key."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- atomic writes -----------------------------------------------------------------------


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


def save_copy(source: Path, path: Path) -> None:
    """`path` the same checkpoint as `source` (best.ckpt as last.ckpt), atomically: a hard
    link, with no byte written, or a copy where the filesystem has no links. The link stays
    as it is when `source` is saved again, since a save renames a new file over its name."""
    with temporary_beside(path) as tmp:
        tmp.unlink()  # made to hold the name: the link or the copy takes it
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


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
