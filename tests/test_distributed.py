"""The DDP code of the multi-gpu projects, run for real on the CPU with the gloo backend, in
both styles: `train --devices 2` (raw: the command starts again under torchrun; Lightning:
its DDP strategy starts the second process), and two "nodes" meeting on 127.0.0.1.

Every test has a timeout and every launch its own free port (raw: torchrun --standalone
picks one), so that a broken rendezvous fails, not hangs. Each multi-gpu project is
installed once per test process and shared with its combination test (test_train.py), in
the same xdist_group.
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch
from conftest import (
    SCRATCH,
    SHORT,
    assert_learned,
    check_run,
    combination_id,
    command_env,
    read_baseline,
    read_rows,
    short,
)

pytestmark = pytest.mark.slow

FRAMEWORKS = ("raw", "lightning")
# The DDP code is the engine's, the same for every task; what a task adds is its metrics,
# reduced over the processes, and its loader: the image projects read with loader processes.
DDP_TASKS = ("image-classification", "tabular-regression")
MULTI_GPU = [c for c in SCRATCH if c["hardware"] == "multi-gpu" and c["task"] in DDP_TASKS]


def tabular(framework: str) -> dict[str, str]:
    return {"task": "tabular-regression", "framework": framework, "hardware": "multi-gpu"}


def in_group(combination: dict[str, str]):
    """A param in the xdist_group of its project (test_train.combination_param's)."""
    return pytest.param(
        combination,
        id=combination_id(combination),
        marks=pytest.mark.xdist_group(combination_id(combination)),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_train(installed, *args: str) -> str:
    """`train --devices 2 ARGS` on the CPU, through the console script, as a user runs it.
    Returns what it printed, once sure that no process printed a traceback (a rank's
    failure need not fail the launch)."""
    port = {"MASTER_PORT": str(free_port())}  # Lightning's; torchrun --standalone picks one
    result = installed.run(
        "train", "--accelerator", "cpu", "--devices", "2", *args, env=port, timeout=400
    )
    assert "Traceback" not in result.stderr, result.stderr[-5000:]
    return result.stdout


def rates(rows: list[dict[str, float]]) -> list[float]:
    """The learning rates logged, in order (raw: `lr`; Lightning's LearningRateMonitor:
    `lr-AdamW/pg1`...)."""
    return [row[key] for row in rows for key in sorted(row) if key == "lr" or key.endswith("pg1")]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("combination", [in_group(c) for c in MULTI_GPU])
def test_ddp_on_two_cpu_processes_learns_writes_once_and_resumes(
    combination, installed_project, tmp_path
):
    task = combination["task"]
    installed = installed_project(combination)
    runs = tmp_path / "runs"
    out = ["--output-dir", str(runs)]
    # In-memory data needs no loader processes on the CPU (the cpu projects' default); the
    # image projects read with loader processes under DDP, which start from a forkserver (a
    # forked DDP process could hang): one each, as they take long to start on the CPU.
    workers = 1 if task == "image-classification" else 0
    loader = [f"train.num_workers={workers}"]
    printed = ddp_train(installed, *out, *loader, *short(task), "--name", "ddp")

    run_dir = runs / "ddp"
    assert [p.name for p in runs.iterdir()] == ["ddp"], "a second rank wrote a run folder"
    assert printed.count("run folder: ") == 1, printed  # rank 0 alone printed
    _, best = check_run(task, run_dir, printed)
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(lines) == len(set(lines)), "a second rank logged the same rows"
    assert_learned(task, best, read_baseline(run_dir))
    history = read_rows(run_dir)

    # Every rank resumes from the same checkpoint, under DDP again, with a larger budget
    # (past early stopping: a model that is already perfect would stop before it).
    steps, every = SHORT[task]
    more = ["--resume", "last", "--max-steps", str(steps + every), "train.patience=0"]
    more += ["train.stopping_threshold=null"]
    if workers:  # the loader's saved place is its workers': their number cannot change
        refused = installed.run("train", *out, *more, "train.num_workers=0", check=False)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "train.num_workers: 1 -> 0: cannot change when a run resumes" in refused.stderr
    resumed = ddp_train(installed, *out, *more)
    assert "resuming from " in resumed and resumed.count("run folder: ") == 1, resumed
    assert f"stopped: the step budget is spent ({steps + every} steps)" in resumed
    rows = read_rows(run_dir)
    assert rows[: len(history)] == history
    added = rows[len(history) :]
    assert added and all(row["step"] > history[-1]["step"] for row in added)
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, mmap=True)
    assert last["global_step"] == steps + every
    # The learning rate goes on decaying from where it was, without a jump.
    assert rates(added) and max(rates(added)) <= rates(history)[-1], (history[-1], added)
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    # The checkpoint of a DDP run is the plain model's: it exports, in one process.
    installed.run("export", "--checkpoint", str(run_dir / "checkpoints" / "best.ckpt"))
    assert (run_dir / "checkpoints" / "best.pt2").is_file()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("combination", [in_group(tabular(f)) for f in FRAMEWORKS])
def test_ddp_equals_one_process_with_twice_the_batch(combination, installed_project, tmp_path):
    """2 processes x batch B take the same steps as 1 process x batch 2B (dropout is off):
    each process reads its half of the same 2B examples, and DDP averages the gradients."""
    installed = installed_project(combination)
    runs = tmp_path / "runs"
    common = ["--output-dir", str(runs), "--max-steps", "20", "--seed", "5"]
    # 32-bit: the comparison is of the distributed math, not of bf16's rounding.
    common += ["--precision", "32", "train.num_workers=0"]
    ddp_train(installed, *common, "--batch-size", "32", "--name", "two")
    # The same 64 examples a step again, as 2 processes x 2 micro-batches of 16: gradients
    # accumulate locally and are all-reduced once, on the last micro-step.
    ddp_train(installed, *common, "--batch-size", "16", "train.accumulate=2", "--name", "two-x2")
    (one,) = installed.drive(
        ["train", "--accelerator", "cpu", "--devices", "1", *common, "--batch-size", "64"]
        + ["--name", "one"]
    )
    one.check()

    def final(name: str) -> dict[str, torch.Tensor]:
        checkpoint = torch.load(runs / name / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 20
        return checkpoint["state_dict"]

    one = final("one")
    for name in ("two", "two-x2"):
        other = final(name)
        assert other.keys() == one.keys()
        difference = max((other[key] - one[key]).abs().max().item() for key in one)
        print(f"{combination['framework']} {name}: max parameter difference: {difference:.3g}")
        assert difference < 1e-5
        last = {key: value for key, value in read_rows(runs / name)[-1].items() if "val/" in key}
        for key, value in last.items():
            assert value == pytest.approx(read_rows(runs / "one")[-1][key], rel=1e-4), key


@pytest.mark.timeout(900)
@pytest.mark.parametrize("combination", [in_group(tabular(f)) for f in FRAMEWORKS])
def test_two_nodes_on_loopback_train_one_run(combination, installed_project, tmp_path):
    """Two torchrun launches, --nnodes=2 and one process each, meet on 127.0.0.1, with the
    command of the project's README."""
    installed = installed_project(combination)
    runs = tmp_path / "runs"
    rendezvous = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    rendezvous += [f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=loopback"]
    command = [sys.executable, "-m", "torch.distributed.run", *rendezvous]
    command += ["-m", installed.package, "train", "--accelerator", "cpu"]
    if combination["framework"] == "lightning":  # Lightning checks what it is given
        command += ["--devices", "1", "train.num_nodes=2"]
    command += ["--output-dir", str(runs), "--name", "multi-node", *short(combination["task"])]
    command += ["train.num_workers=0"]
    env = command_env({"PYTHONPATH": str(installed.project / "src")})
    nodes = [
        subprocess.Popen(
            command,
            cwd=installed.project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=400) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, (stdout + stderr)[-3000:]
    assert [p.name for p in runs.iterdir()] == ["multi-node"]
    # One node, rank 0, printed the run's closing lines; the other did not.
    printed = sorted((stdout for stdout, _ in outputs), key=lambda out: "run folder: " in out)
    assert "run folder: " not in printed[0], printed[0]
    _, best = check_run(combination["task"], runs / "multi-node", printed[1])
    assert_learned(combination["task"], best, read_baseline(runs / "multi-node"))
