"""Hostile inputs to a generated project: bad data, checkpoints that are not the project's,
a folder that cannot be written, divergence. Each ends in one line on stderr and a known
exit code: 2 for what the user can fix, 1 for a run that diverged; never a traceback, and
nothing of the user's lost or written where it should not be.

The cases of one project run in ONE process (Installed.drive), through the console script's
entry point, cli.main. test_robust_signals.py and test_robust_slurm.py reuse the helpers.
"""

from __future__ import annotations

import csv
import os
import pickle
import struct
import zlib
from pathlib import Path

import pytest
from conftest import Installed, Outcome, run

CPU = ["--accelerator", "cpu", "--devices", "1"]
FEW_STEPS = ["--max-steps", "4", "train.eval_every=2", "train.patience=0"]


def cpu_project(installed_project, task: str, framework: str) -> Installed:
    return installed_project({"task": task, "framework": framework, "hardware": "cpu"})


def group(task: str) -> pytest.MarkDecorator:
    """The xdist group of the task's cpu projects, shared with test_train's tests."""
    return pytest.mark.xdist_group(f"{task}-cpu")


def assert_one_line(outcome: Outcome, says: str, code: int = 2) -> str:
    """The command failed with `code`, its last line on stderr is `error: ...` holding `says`,
    and nothing printed a traceback. Returns that line."""
    printed = outcome.stderr + outcome.stdout
    assert outcome.code == code, (outcome.argv, outcome.code, printed[-3000:])
    assert "Traceback" not in printed, (outcome.argv, printed[-3000:])
    lines = outcome.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and says in lines[-1], (outcome.argv, lines)
    return lines[-1]


def run_patched(installed: Installed, setup: str, *argv: str, cwd: Path) -> Outcome:
    """`argv` through cli.main, in a process of its own that first runs `setup` (Python that
    injects a fault: a full disk, a nan...)."""
    code = (
        f"import sys\n{setup}\nfrom {installed.package}.cli import main\n"
        f"sys.argv = {[installed.script.name, *argv]!r}\nmain()\n"
    )
    done = run([str(installed.python), "-c", code], cwd=cwd, check=False)
    return Outcome([*argv], done.returncode, done.stdout, done.stderr)


def checkpoint_step(path: Path) -> int:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


def file_states(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# --- bad data --------------------------------------------------------------------------


def write_rows(path: Path, header: list[str], rows: list) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def table(path: Path, n: int = 40, edit: dict | None = None) -> Path:
    """A learnable table a,b,target of n rows; edit maps (row, column) to a cell's text."""
    rows = [[i / n, (i * 7 % n) / n, 2 * i / n + 0.1] for i in range(n)]
    for (row, column), value in (edit or {}).items():
        rows[row][column] = value
    return write_rows(path, ["a", "b", "target"], rows)


def bomb_png(path: Path, side: int = 15000) -> Path:
    """A small PNG file that announces side x side pixels (Pillow refuses it on opening)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    return path


def images(root: Path, classes=("cat", "dog"), per_class: int = 6) -> Path:
    from PIL import Image

    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (20, 16), (200 * c, 40 * i, 90)).save(root / name / f"{i}.png")
    return root


def bad_data(task: str, data: Path) -> list[tuple[str, Path]]:
    """(what the one line says, the file or folder) for data the task must refuse."""
    folder = data / "a-folder.csv"
    folder.mkdir()
    cases = [("does not exist", data / "missing.csv")]
    if task != "image-classification":
        cases.append(("is a folder", folder))
    if task == "tabular-regression":
        latin = data / "latin1.csv"
        latin.write_bytes("a,b,target\n1,2,3\ncaf\xe9,2,3\n".encode("latin-1"))
        ragged = data / "long.csv"
        ragged.write_text("a,b,target\n1,2,3\n4,5,6,7\n" * 5)
        flat = {(i, 2): 7 for i in range(40)}
        cases += [
            ("'b': 'nan' is not a finite number", table(data / "n.csv", edit={(2, 1): "nan"})),
            (
                "line 2, column 'a': 'red' is not a number",
                table(data / "w.csv", edit={(0, 0): "red"}),
            ),
            ("too few rows (1)", table(data / "one.csv", n=1)),
            ("has the same value, 7, on every row", table(data / "flat.csv", edit=flat)),
            ("line 3 has 4 fields, the header 3", ragged),
            (
                "expected a CSV with a 'target' column",
                write_rows(data / "nt.csv", ["a"], [[1]] * 9),
            ),
            ("not a readable UTF-8 CSV file", latin),
            ("has a header but no rows", write_rows(data / "empty.csv", ["a", "target"], [])),
        ]
    elif task == "text-classification":
        rows = [[f"good film {i}", "pos"] for i in range(20)]
        cases += [
            ("label", write_rows(data / "no-label.csv", ["text", "kind"], rows)),
            ("class", write_rows(data / "one-class.csv", ["text", "label"], rows)),
            ("UTF-8", data / "binary.csv"),
        ]
        (data / "binary.csv").write_bytes(b"text,label\n\xff\xfe\x00bad,pos\n" * 20)
    elif task == "image-classification":
        bombs = images(data / "bombs")
        bomb_png(bombs / "cat" / "huge.png")
        broken = images(data / "broken")
        (broken / "dog" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        cases += [("has 1 class sub-folders", images(data / "one", classes=("cat",)))]
        cases += [("huge.png", bombs), ("3.png", broken)]
    else:  # language modelling
        (data / "empty.txt").write_text("")
        (data / "binary.txt").write_bytes(bytes(range(256)) * 40)
        cases += [("empty", data / "empty.txt"), ("UTF-8", data / "binary.txt")]
    return cases


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "task, framework",
    [
        pytest.param("tabular-regression", "raw", marks=group("tabular-regression")),
        pytest.param("text-classification", "lightning", marks=group("text-classification")),
        pytest.param("image-classification", "raw", marks=group("image-classification")),
        pytest.param("language-modeling", "lightning", marks=group("language-modeling")),
    ],
)
def test_bad_data_is_one_line_and_leaves_no_run_folder(
    task, framework, installed_project, tmp_path
):
    """data.py is the same in both styles: each task's cases run in one of them."""
    installed = cpu_project(installed_project, task, framework)
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    cases = bad_data(task, data)
    before = file_states(data)
    train = ["train", *CPU, *FEW_STEPS, "--output-dir", str(runs)]
    outcomes = installed.drive(*([*train, "--data", str(path)] for _, path in cases))
    for (says, path), outcome in zip(cases, outcomes, strict=True):
        line = assert_one_line(outcome, says)
        assert path.name in line, line  # the line names the file at fault
    assert not runs.exists(), "a refused dataset left a run folder"
    assert file_states(data) == before, "the data was changed"


# --- divergence --------------------------------------------------------------------------

# A nan training loss from the 5th training step of this process on.
NAN_FROM_STEP_5 = """
import importlib, torch
model = importlib.import_module("{package}.model")
engine = importlib.import_module("{package}.engine")
step, seen = model.step, []

def nan_step(net, batch):
    loss, outputs, targets = step(net, batch)
    if torch.is_grad_enabled():
        seen.append(1)
        if len(seen) >= 5:
            loss = loss * float("nan")
    return loss, outputs, targets

engine.step = nan_step
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
@group("tabular-regression")
def test_a_diverged_run_is_exit_1_and_keeps_its_last_good_checkpoint(
    framework, installed_project, tmp_path
):
    installed = cpu_project(installed_project, "tabular-regression", framework)
    runs = tmp_path / "runs"
    argv = ["train", *CPU, "--max-steps", "10", "train.eval_every=2", "train.patience=0"]
    argv += ["--output-dir", str(runs), "--name", "d"]
    setup = NAN_FROM_STEP_5.format(package=installed.package)
    outcome = run_patched(installed, setup, *argv, cwd=tmp_path)
    last = runs / "d" / "checkpoints" / "last.ckpt"
    line = assert_one_line(outcome, f"the last good checkpoint is {last}", code=1)
    assert "diverged" in line, line
    # Nothing of the diverged model was saved: the checkpoints are of step 4, finite.
    import torch

    for path in (last, last.with_name("best.ckpt")):
        assert checkpoint_step(path) == 4, path
        weights = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point())
    assert not [p for p in (runs / "d").rglob(".*") if p.name != ".lock"], "a temporary file"


# --- checkpoints that are not this project's ---------------------------------------------


class Payload:
    """Unpickled, it would create a file: it must never be."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
@group("tabular-regression")
def test_checkpoints_that_are_not_the_projects_are_one_line(framework, installed_project, tmp_path):
    """Damaged, malicious or foreign checkpoints, and the other engine's: one line each;
    the other engine's checkpoint evaluates (one format), only its own engine resumes it."""
    other = "lightning" if framework == "raw" else "raw"
    installed = cpu_project(installed_project, "tabular-regression", framework)
    runs = tmp_path / "runs"
    trained = ["train", *CPU, *FEW_STEPS, "--output-dir", str(runs), "--name", "other"]
    (done,) = cpu_project(installed_project, "tabular-regression", other).drive(trained)
    done.check()
    foreign = runs / "other" / "checkpoints" / "last.ckpt"
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(foreign.read_bytes()[: foreign.stat().st_size // 2])
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps(Payload(str(tmp_path / "pwned"))))
    import torch

    alien = tmp_path / "alien.ckpt"
    torch.save({"task": "something-else"}, alien)
    train = ["train", *CPU, "--output-dir", str(runs), "--max-steps", "8"]
    cases = [
        (f"was written by the {other} engine", [*train, "--resume", str(foreign)]),
        ("cannot read checkpoint", ["evaluate", "--checkpoint", str(damaged)]),
        ("cannot read checkpoint", [*train, "--resume", str(damaged), "--name", "x"]),
        ("cannot read checkpoint", ["evaluate", "--checkpoint", str(evil)]),
        ("cannot read checkpoint", ["predict", "1,2", "--checkpoint", str(evil)]),
        ("is not a checkpoint of this project", ["export", "--checkpoint", str(alien)]),
    ]
    before = file_states(runs)
    *outcomes, evaluated = installed.drive(
        *(argv for _, argv in cases), ["evaluate", "--checkpoint", str(foreign)]
    )
    for (says, _), outcome in zip(cases, outcomes, strict=True):
        line = assert_one_line(outcome, says)
        assert "weights_only" not in line, line
    assert "val/mse: " in evaluated.check().stdout
    assert not (tmp_path / "pwned").exists(), "a checkpoint ran code"
    assert file_states(runs) == before, "a refused command changed a run"


# --- a folder that cannot be written -----------------------------------------------------

# Every new file or folder under the output folder: no space left on the device.
FULL_DISK = """
import errno, os, pathlib, builtins
root = {root!r}
def full(path):
    return str(os.path.abspath(path)).startswith(root)
def refuse(path):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
open_, mkdir = builtins.open, os.mkdir
def fake_open(file, mode="r", *args, **kwargs):
    if isinstance(file, (str, os.PathLike)) and full(file) and any(m in mode for m in "wax+"):
        refuse(file)
    return open_(file, mode, *args, **kwargs)
def fake_mkdir(path, *args, **kwargs):
    if full(path):
        refuse(path)
    return mkdir(path, *args, **kwargs)
builtins.open, os.mkdir = fake_open, fake_mkdir
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
@group("tabular-regression")
def test_a_full_or_read_only_output_folder_is_one_line(framework, installed_project, tmp_path):
    installed = cpu_project(installed_project, "tabular-regression", framework)
    disk = tmp_path / "disk"
    disk.mkdir()
    train = ["train", *CPU, *FEW_STEPS, "--name", "r"]
    outcome = run_patched(
        installed, FULL_DISK.format(root=str(disk)), *train, "--output-dir", str(disk), cwd=tmp_path
    )
    assert_one_line(outcome, "No space left on device")
    assert not list(disk.iterdir())
    # A folder the process may not write (a read-only mount where the tests run as root).
    read_only = Path("/sys/fs") if os.geteuid() == 0 else disk
    if os.geteuid() != 0:
        disk.chmod(0o555)
    try:
        (outcome,) = installed.drive([*train, "--output-dir", str(read_only / "runs")])
    finally:
        disk.chmod(0o755)
    line = assert_one_line(outcome, str(read_only / "runs"))
    assert any(why in line for why in ("Read-only", "Permission denied", "not permitted")), line
    assert not (read_only / "runs").exists()
