"""What produced a run: the command line, the project's git commit (and the uncommitted
changes, if any), the versions, the hardware found and the installed packages.

Rank 0 writes them into the run folder when the run starts: record.json, packages.txt (in
`pip freeze` form) and, when the work tree had changes, git.diff. A resumed run adds its own
command and commit to record.json's "resumed" list.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import UserError
from .runs import read_checkpoint, run_folder_of, write_atomically

PACKAGE_DIR = Path(__file__).resolve().parent.parent


def write_record(run_dir: Path, resumed: bool) -> dict[str, Any]:
    """Write the run's record; returns its short form, which checkpoints carry."""
    path = run_dir / "record.json"
    git = git_state()
    short = {"command": command_line(), "commit": git and git["commit"]}
    short["dirty"] = bool(git and git["dirty"])
    short["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if resumed and path.is_file():
        record = read_record(path)
        record.setdefault("resumed", []).append(short)
        write_atomically(path, json.dumps(record, indent=2))
        return short
    record = {**short, "untracked": git["untracked"] if git else []}
    if git and git["diff"]:  # the changes to tracked files; untracked ones are listed
        write_atomically(run_dir / "git.diff", git["diff"])
        record["diff"] = "git.diff"
    record |= {
        "cwd": os.getcwd(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "hardware": hardware(),
        "packages": "packages.txt",
        "resumed": [],
    }
    write_atomically(run_dir / "packages.txt", "\n".join(installed_packages()) + "\n")
    write_atomically(path, json.dumps(record, indent=2))
    return short


def command_line() -> str:
    """The command as typed: `my-project train --lr 0.01`, or `python -m my_project train`."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":  # a distributed worker: torchrun ran `python -m <package>`
        program = f"python -m {__package__.split('.')[0]}"
    return " ".join([program, *map(shlex.quote, sys.argv[1:])])


def git_state() -> dict[str, Any] | None:
    """The commit of the project's work tree, whether it had changes, and their diff.

    The project is the git work tree that holds this package (an editable install), else
    the one of the working directory; None outside any, or without git.
    """
    for folder in (PACKAGE_DIR, Path.cwd()):
        commit = git("rev-parse", "HEAD", cwd=folder)
        if commit:
            changes = git("status", "--porcelain", cwd=folder) or ""
            untracked = [line[3:] for line in changes.splitlines() if line.startswith("??")]
            return {
                "commit": commit.strip(),
                "dirty": bool(changes.strip()),
                "untracked": untracked,
                "diff": git("diff", "HEAD", cwd=folder) or "",
            }
    return None


def git(*args: str, cwd: Path) -> str | None:
    """A git command's output, or None when it fails (no repository, no commit, no git)."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "lightning", "torchmetrics", "optuna", "mlflow", "wandb"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def hardware() -> dict[str, Any]:
    """The processors and accelerators this process could see."""
    import torch

    found: dict[str, Any] = {"machine": platform.machine(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda
        found["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    found["mps"] = torch.backends.mps.is_available()
    return found


@functools.cache
def installed_packages() -> list[str]:
    """Every installed distribution as `name==version`, as `pip freeze` lists them."""
    found: dict[str, str] = {}
    for distribution in importlib.metadata.distributions():
        name = distribution.metadata["Name"]
        if name:  # the first one found on sys.path is the one imported
            found.setdefault(name.lower(), f"{name}=={distribution.version}")
    return sorted(found.values(), key=str.lower)


def record_of(checkpoint: str | Path) -> dict[str, Any] | None:
    """The record of the run a checkpoint comes from: its run folder's, else its own copy."""
    folder = run_folder_of(checkpoint)
    if folder is not None and (folder / "record.json").is_file():
        return read_record(folder / "record.json")
    return read_checkpoint(checkpoint).get("record")


def read_record(path: Path) -> dict[str, Any]:
    """A run's record.json, or one line saying that it is damaged and what to do."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        record = error
    if not isinstance(record, dict) or not isinstance(record.get("resumed", []), list):
        raise UserError(
            f"{path} is damaged (not the JSON object a run writes); restore it, or delete it "
            "(a new record starts; checkpoints carry their own)"
        )
    return record


def describe_source(record: dict[str, Any] | None) -> str:
    """'trained at commit 1a2b3c4d5e6f', for `evaluate`."""
    if not record or not record.get("commit"):
        return "trained outside a git repository (no commit recorded)"
    changes = ", with uncommitted changes (git.diff in its run folder)" if record["dirty"] else ""
    return f"trained at commit {record['commit'][:12]}{changes}"
