"""Interrupted runs: Ctrl-C and SIGTERM stop a run with a resumable last.ckpt and the
command that goes on; a kill while a checkpoint is written leaves the previous one whole; a
run killed before its first checkpoint starts again; one process trains in a run folder at
a time. (A kill -9 mid-epoch, resumed: test_train.py.)"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import command_env, run
from test_robust import CPU, assert_one_line, checkpoint_step, cpu_project, group, run_patched

pytestmark = group("tabular-regression")


def start(installed, *argv: str) -> subprocess.Popen:
    """The real console script, in the background; `finish` gives what it printed."""
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [str(installed.script), *argv],
        cwd=installed.project,
        env=command_env(),
        stdout=out,
        stderr=err,
    )
    process.printed = out, err
    return process


def finish(process: subprocess.Popen) -> tuple[str, str]:
    process.wait(timeout=300)
    for file in process.printed:
        file.seek(0)
    return tuple(file.read() for file in process.printed)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the run ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.005)


def leftovers(run_dir: Path) -> list[Path]:
    """Temporary files of interrupted writes."""
    return sorted(p for p in run_dir.rglob(".*") if ".tmp" in p.name)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_signal_stops_the_run_and_the_printed_command_resumes_it_exactly(
    framework, installed_project, tmp_path
):
    """SIGINT and SIGTERM mid-run: exit code 128+signum with one line that gives the command
    to go on (Lightning's own Ctrl-C handling exits 1), a last.ckpt that resumes to the
    same metrics, line for line, as if the run never stopped."""
    installed = cpu_project(installed_project, "tabular-regression", framework)
    runs = tmp_path / "my runs"  # a space: the printed command must quote the path
    steps = 300  # a tiny model's steps are fast: some left to stop
    train = ["train", *CPU, "--max-steps", str(steps), "train.eval_every=5", "train.patience=0"]
    train += ["--seed", "3", "--output-dir", str(runs)]
    signals = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}
    goes_on = {}
    for signum, name in signals.items():  # one after the other: neither runs ahead unseen
        process = start(installed, *train, "--name", name)
        last = runs / name / "checkpoints" / "last.ckpt"
        wait_for(last, process)
        process.send_signal(signum)
        out, err = finish(process)
        assert "Traceback" not in out + err, err
        assert checkpoint_step(last) < steps, "the run finished before the signal"
        if framework == "lightning" and signum == signal.SIGINT:
            assert process.returncode == 1, err  # Lightning's: its last evaluation is saved
            goes_on[name] = f"train --resume last --output-dir '{runs}' --name {name}"
            continue
        assert process.returncode == 128 + signum, err
        said = err.strip().splitlines()[-1]
        step = checkpoint_step(last)
        assert said.startswith(f"interrupted ({name}): {last} holds step {step}; go on: "), said
        goes_on[name] = said.split("go on: ")[1].removeprefix(f"{installed.script.name} ")
    # The reference and the Ctrl-C'd run's command in one process; the other's as printed,
    # in a shell.
    reference, resumed = installed.drive([*train, "--name", "ref"], shlex.split(goes_on["SIGINT"]))
    reference.check(), resumed.check()
    path = f"{installed.script.parent}{os.pathsep}{os.environ['PATH']}"
    command = f"{installed.script.name} {goes_on['SIGTERM']}"
    run(["bash", "-c", command], cwd=installed.project, env={"PATH": path})
    for name in signals.values():
        metrics = (runs / name / "metrics.csv").read_text()
        assert metrics == (runs / "ref" / "metrics.csv").read_text(), name
        assert checkpoint_step(runs / name / "checkpoints" / "last.ckpt") == steps
        assert not leftovers(runs / name)


# Kills the process once a new version of last.ckpt is written, before it replaces the
# old one.
KILL_DURING_SAVE = """
import os, signal, torch

save = torch.save

def killing_save(obj, file, *args, **kwargs):
    save(obj, file, *args, **kwargs)
    path = str(getattr(file, "name", file))
    folder, name = os.path.split(path)
    if name.startswith(".last.") and os.path.exists(os.path.join(folder, "last.ckpt")):
        file.flush()
        os.kill(os.getpid(), signal.SIGKILL)

torch.save = killing_save
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_a_kill_during_a_save_leaves_the_previous_checkpoint_whole(
    framework, installed_project, tmp_path
):
    installed = cpu_project(installed_project, "tabular-regression", framework)
    runs = tmp_path / "runs"
    train = ["train", *CPU, "--max-steps", "6", "train.eval_every=2", "train.patience=0"]
    train += ["--output-dir", str(runs)]
    killed = run_patched(installed, KILL_DURING_SAVE, *train, "--name", "killed", cwd=tmp_path)
    assert killed.code == -signal.SIGKILL, killed.stderr
    checkpoints = runs / "killed" / "checkpoints"
    # The kill came as step 4's last.ckpt was being written: step 2's is whole.
    assert checkpoint_step(checkpoints / "last.ckpt") == 2
    assert leftovers(checkpoints), "the killed write left no temporary file"

    resume = [*train, "--resume", "last", "--name", "killed"]
    resumed, reference = installed.drive(resume, [*train, "--name", "ref"])
    resumed.check(), reference.check()
    assert not leftovers(runs / "killed"), "the next start left the stale temporary file"
    metrics = (runs / "killed" / "metrics.csv").read_text()
    assert metrics == (runs / "ref" / "metrics.csv").read_text()


@pytest.mark.timeout(600)
def test_a_run_killed_before_its_first_checkpoint_starts_again(installed_project, tmp_path):
    """While a run trains, its folder is its own; killed before its first checkpoint, it has
    nothing to resume and starts again under its name. (cli.py and plumbing, the same in
    both styles: one style.)"""
    installed = cpu_project(installed_project, "tabular-regression", "raw")
    runs = tmp_path / "runs"
    train = ["train", *CPU, "--output-dir", str(runs), "--name", "k"]
    process = start(installed, *train)
    wait_for(runs / "k" / "config.yaml", process)
    process.send_signal(signal.SIGSTOP)  # frozen before its first checkpoint
    try:
        assert not list((runs / "k" / "checkpoints").glob("*.ckpt")), "too late: it had one"
        (busy,) = installed.drive([*train, "--max-steps", "4"])
        assert_one_line(busy, "is in use by another process")
    finally:
        process.kill()
        finish(process)
    resumed, again = installed.drive(
        [*train, "--resume", "last"], [*train, "--max-steps", "4", "train.eval_every=2"]
    )
    assert_one_line(resumed, "train first")
    again.check()
    assert checkpoint_step(runs / "k" / "checkpoints" / "last.ckpt") == 4
