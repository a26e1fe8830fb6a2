"""Run folders (runs/<name>/: config.yaml, record.json, metrics.csv, baseline.json,
curves.png, checkpoints/), atomic writes, and the checkpoints of either engine: Lightning's
format, weights as `state_dict` (`model.*`), settings and data as `hyper_parameters`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import secrets
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import UserError

PACKAGE = __package__.split(".")[0]
RUN_NAME_ENV = f"{PACKAGE.upper()}_RUN_NAME"  # the run that a launch's processes share
# What a resumed run may change (its loader's saved state fixes num_workers); the rest is refused.
CHANGEABLE_ON_RESUME = {"data.path"} | {
    f"train.{key}"
    for key in "max_steps patience stopping_threshold eval_every accelerator devices num_nodes "
    "precision compile output_dir name".split()
}


def global_rank() -> int:
    """This process's rank, as torchrun, Lightning or SLURM set it (0 when alone)."""
    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("NODE_RANK", 0)) + int(os.environ.get("LOCAL_RANK", 0))


def new_run_name() -> str:
    """The run's name: the one a distributed launch's first process chose, or the time."""
    return os.environ.get(RUN_NAME_ENV) or time.strftime("%Y-%m-%d_%H-%M-%S")


def choose_run_dir(output_dir: str, name: str | None, resume: Path | None) -> tuple[Path, bool]:
    """The folder a run writes into, and whether it continues the run already there: a
    resumed checkpoint continues its own folder, unless `name` names another one."""
    if ".." in Path(output_dir).parts and not Path(output_dir).parent.is_dir():
        raise UserError(f"--output-dir {output_dir} goes through a folder that does not exist")
    if resume is not None and resume.parent.name == "checkpoints":
        folder = resume.parent.parent
        if name in (None, folder.name):
            return folder, True
    if resume is not None and name is None:
        raise UserError(f"{resume} is not in a run folder; add --name NEW to start a run from it")
    run_dir = Path(output_dir) / (name or new_run_name())
    if run_dir.is_file() or any((run_dir / "checkpoints").glob("*.ckpt")):
        raise UserError(
            f"run folder {run_dir} exists already; pick another --name, or continue it "
            "with --resume last"
        )
    return run_dir, False


@contextlib.contextmanager
def claimed(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock while training in it, so that a second run of the same
    name is refused (the operating system releases it however the process ends)."""
    from filelock import FileLock, Timeout

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(run_dir / ".lock", blocking=False)
        lock.acquire()
    except Timeout:
        raise UserError(
            f"run folder {run_dir} is in use by another process; pick another --name"
        ) from None
    except OSError as error:
        raise UserError(f"cannot create the run folder {run_dir}: {error.strerror}") from None
    try:
        yield
    finally:
        lock.release()


def start_run_dir(run_dir: Path, config_yaml: str, resumed: bool, data: str | None) -> None:
    """The run's config.yaml and record.json: what produced it, on what data (a resumed run
    adds itself)."""
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    for stale in run_dir.rglob(".*.tmp*"):  # left by a process killed while writing
        stale.unlink(missing_ok=True)
    write_atomically(run_dir / "config.yaml", config_yaml)
    path, commit, changes = run_dir / "record.json", git("rev-parse", "HEAD"), git("status", "-s")
    program = Path(sys.argv[0]).name  # torchrun's processes run `python -m <package>`
    program = f"python -m {PACKAGE}" if program == "__main__.py" else program
    now = {"command": shlex.join([program, *sys.argv[1:]]), "time": time.ctime()}
    now |= {"commit": commit and commit.strip(), "dirty": bool(changes and changes.strip())}
    now["data"] = data_fingerprint(data)
    if resumed and path.is_file():
        record = json.loads(path.read_text(encoding="utf-8"))
        record.setdefault("resumed", []).append(now)
    else:
        versions = {"python": platform.python_version()}
        for package in ("torch", "lightning", "torchmetrics"):
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                versions[package] = importlib.metadata.version(package)
        record = {**now, "versions": versions, "resumed": []}
        if now["dirty"]:  # the uncommitted changes to tracked files, beside the record
            write_atomically(run_dir / "git.diff", git("diff", "HEAD") or "")
    write_atomically(path, json.dumps(record, indent=2))


def git(*args: str) -> str | None:
    """A git command's output in the project's folder, or None (no repository, no git)."""
    try:
        done = subprocess.run(["git", *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def data_fingerprint(path: str | None) -> dict[str, str]:
    """What tells a dataset from another: its size and a hash of its first and last megabyte
    (a file) or of its files' names and sizes (a folder), and its path."""
    if path is None:
        return {"path": "the built-in data"}
    data, digest = Path(path), hashlib.sha256()
    found = data.rglob("*") if data.is_dir() else []
    files = sorted(p for p in found if p.is_file() and not p.name.startswith("."))
    for file in files:
        digest.update(f"{file.relative_to(data)}\t{file.stat().st_size}\n".encode())
    if data.is_file():
        with data.open("rb") as file:
            end = file.seek(0, os.SEEK_END)
            for start in (0, max(end - 2**20, 0)):
                file.seek(start)
                digest.update(file.read(2**20))
    size = f"{len(files)} files" if data.is_dir() else f"{data.stat().st_size} bytes"
    return {"path": str(data.resolve()), "size": size, "content": digest.hexdigest()[:16]}


def check_same_data(checkpoint: Path, data: str | None, name: str | None) -> None:
    """Refuse to continue a run on other data than its own (train --data-changed: on purpose)."""
    folder, record = checkpoint.parent.parent, checkpoint.parent.parent / "record.json"
    if name not in (None, folder.name) or not record.is_file() or not Path(data or ".").exists():
        return  # a new run from the checkpoint, no record, or no data (data.py says so)
    saved = json.loads(record.read_text(encoding="utf-8"))
    was = ([saved, *saved.get("resumed", [])][-1]).get("data") or data_fingerprint(None)
    now = data_fingerprint(data)
    if (was.get("content"), was.get("size")) != (now.get("content"), now.get("size")):
        what = [f"{k} {was.get(k)} -> {now[k]}" for k in ("path", "size") if was.get(k) != now[k]]
        raise UserError(
            f"{folder} trained on other data ({', '.join(what or ['its content'])}): resume "
            "it on its own data, or pass --data-changed to go on with this data"
        )


# --- checkpoints -------------------------------------------------------------------------


def find_checkpoint(which: str, output_dir: str = "runs", name: str | None = None) -> Path:
    """'best' or 'last' of run `name` (by default the latest run), or a checkpoint's path."""
    if which not in ("best", "last"):
        path = Path(which)
        if not path.is_file():
            raise UserError(
                f"checkpoint {path} {'is a folder' if path.is_dir() else 'does not exist'}"
            )
        return path
    folders = [Path(output_dir) / name] if name else Path(output_dir).glob("*")
    found = [path for folder in folders for path in folder.glob(f"checkpoints/{which}.ckpt")]
    if not found:
        raise UserError(
            f"no {Path(output_dir) / (name or '*')}/checkpoints/{which}.ckpt; train first (a run "
            "writes its first checkpoint at its first evaluation), or give a checkpoint's path"
        )
    return max(found, key=lambda path: path.stat().st_mtime)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of this project, of either engine, checked; its tensors are read from
    the file when used (memory-mapped), so that reading its settings costs little."""
    import torch

    try:
        with warnings.catch_warnings():  # torch's unpickler comments on files it refuses
            warnings.simplefilter("ignore")
            # Tensors and plain values only: loading runs no code from the file.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated, not a torch file, a pickle of other objects...
        raise UserError(
            f"cannot read checkpoint {path}: damaged, or not a checkpoint ({type(error).__name__})"
        ) from None
    settings = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    settings = settings if isinstance(settings, dict) else {}
    parts = (settings.get("cfg"), settings.get("meta"), settings and checkpoint.get("state_dict"))
    if not all(isinstance(part, dict) for part in parts):
        raise UserError(
            f"{path} is not a checkpoint of this project; use one from runs/*/checkpoints/"
        )
    return checkpoint


def engine_of(checkpoint: dict[str, Any]) -> str:
    return "lightning" if "pytorch-lightning_version" in checkpoint else "raw"


def model_weights(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model's weights, named as in model.py (both engines save them as `model.*`)."""
    weights = checkpoint["state_dict"].items()
    return {
        key.removeprefix("model."): value for key, value in weights if key.startswith("model.")
    }


def check_resumable(
    checkpoint: dict[str, Any], settings: dict[str, Any], engine: str, path
) -> None:
    """Refuse to resume what cannot go on: another engine's run, a setting that cannot
    change mid-run, or a budget spent already."""
    if engine_of(checkpoint) != engine:
        raise UserError(
            f"{path} was written by the {engine_of(checkpoint)} engine, this project trains "
            f"with {engine}: evaluate, predict and export read it, but only its own engine resumes it"
        )
    saved, now = flatten(checkpoint["hyper_parameters"]["cfg"]), flatten(settings)
    changed = [
        f"{key}: {saved.get(key)} -> {value}"
        for key, value in now.items()
        if saved.get(key) != value and key not in CHANGEABLE_ON_RESUME
    ]
    if changed:
        raise UserError(
            f"{'; '.join(changed)}: cannot change when a run resumes; start a new run "
            "(without --resume) to change them"
        )
    if checkpoint["global_step"] >= now["train.max_steps"]:
        raise UserError(
            f"{path} has trained its {checkpoint['global_step']} steps; pass a larger "
            "--max-steps to train on"
        )


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"width": 8}} -> {"model.width": 8}"""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# --- atomic writes -----------------------------------------------------------------------


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save into a temporary file beside `path`, renamed over it: a process killed at
    any moment leaves the previous file or the new one, never a part of one."""
    import torch

    with temporary_beside(path) as tmp, tmp.open("wb") as file:
        torch.save(obj, file)


def write_atomically(path: Path, text: str) -> None:
    with temporary_beside(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextlib.contextmanager
def temporary_beside(path: Path) -> Iterator[Path]:
    """A temporary file beside `path` (on the same disk), renamed over it on success and
    removed on failure; a full or read-only disk is one line, the old file left whole."""
    # Hidden, and with the target's suffix last (torch.export wants its .pt2).
    tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = error if isinstance(error, OSError) else error.__context__
        if isinstance(cause, OSError) and cause.strerror:  # torch reports one as a RuntimeError
            raise UserError(
                f"cannot write {path}: {cause.strerror}; the previous file, if any, is intact"
            ) from None
        raise
