"""The DDP code of the multi-gpu projects, run for real on the CPU with the gloo backend.

Raw projects are launched by torchrun, Lightning ones with --devices 2. Every test has a
timeout and every launch its own free port (raw: torchrun --standalone picks one), so that
a broken rendezvous fails, not hangs; the engines destroy their process group when they
finish. Each multi-gpu project is installed once per test process and shared with its
combination test (test_train.py), in the same xdist_group.
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
    read_metrics,
    run,
    short,
)

pytestmark = pytest.mark.slow

MULTI_GPU = [c for c in SCRATCH if c["hardware"] == "multi-gpu"]
TABULAR_RAW = {"task": "tabular-regression", "framework": "raw", "hardware": "multi-gpu"}
# The tests of one project run in one test process (see test_train.combination_param).
TABULAR_RAW_GROUP = pytest.mark.xdist_group(combination_id(TABULAR_RAW))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def ddp_train(installed, combination: dict[str, str], *args: str) -> str:
    """`train ARGS` in two processes on the CPU: raw under torchrun, Lightning with
    --devices 2 (which starts the second process itself). Returns what it printed, once
    sure that no process printed a traceback (a rank's failure need not fail the launch)."""
    if combination["framework"] == "raw":
        launch = ["--standalone", "--nproc-per-node=2", "-m", installed.package]
        result = run(
            torchrun(*launch, "train", *args),
            cwd=installed.project,
            timeout=300,
            env={"PYTHONPATH": str(installed.project / "src")},
        )
    else:
        port = {"MASTER_PORT": str(free_port())}
        result = installed.run("train", *args, "--devices", "2", env=port, timeout=300)
    assert "Traceback" not in result.stderr, result.stderr[-5000:]
    return result.stdout


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "combination",
    [
        pytest.param(c, id=combination_id(c), marks=pytest.mark.xdist_group(combination_id(c)))
        for c in MULTI_GPU
    ],
)
def test_ddp_on_two_cpu_processes_learns_writes_once_and_resumes(
    combination, installed_project, tmp_path
):
    task = combination["task"]
    installed = installed_project(combination)
    runs = tmp_path / "runs"
    common = ["--accelerator", "cpu", "--output-dir", str(runs)]
    # In-memory data needs no loader processes on the CPU (the cpu projects' default).
    in_process = ["--set", "train.num_workers=0"]
    # The image projects' first run keeps their default: loader processes under DDP, which
    # start from a forkserver (a forked DDP process could hang). They take long to start on
    # the CPU, so the resumed run loads in the main process.
    first = [] if task == "image-classification" else in_process
    printed = ddp_train(installed, combination, *common, *first, *short(task), "--name", "ddp")

    run_dir = runs / "ddp"
    assert [p.name for p in runs.iterdir()] == ["ddp"], "a second rank wrote a run folder"
    history, best = check_run(task, run_dir, printed)  # rank 0 alone printed
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(lines) == len(set(lines)), "a second rank logged the same rows"
    assert_learned(task, best, read_baseline(run_dir))

    # Every rank resumes from the same checkpoint, under DDP again, with a larger budget:
    # --devices 2 relaunches raw through torchrun, and Lightning starts its second process.
    # Then the checkpoint of a DDP run, the plain model's, exports. In one process.
    steps, every = SHORT[task]
    more = ["--resume", "last", "--max-steps", str(steps + every), "--devices", "2", *in_process]
    # Past early stopping: a model that is already perfect would stop before the budget.
    more += ["--set", "train.patience=0"]
    resumed, exported = installed.drive(
        ["train", *common, *more],
        ["export", "--checkpoint", str(run_dir / "checkpoints" / "best.ckpt")],
        env={"MASTER_PORT": str(free_port())},
        timeout=300,
    )
    resumed.check()
    exported.check()
    assert "Traceback" not in resumed.stderr, resumed.stderr[-5000:]
    rows = read_metrics(run_dir)
    assert rows[: len(history)] == history
    added = rows[len(history) :]
    assert added and added[-1]["step"] == steps + every
    assert all(row["step"] > history[-1]["step"] for row in added)
    # The learning rate goes on decaying from where it was, without a jump.
    assert all(row["lr"] <= history[-1]["lr"] for row in added), [history[-1], *added]
    assert f"stopped after step {steps + every}: the step budget is spent" in resumed.stdout
    assert [p.name for p in runs.iterdir()] == ["ddp"]


@pytest.mark.timeout(600)
@TABULAR_RAW_GROUP
def test_raw_ddp_equals_one_process_with_twice_the_batch(installed_project, tmp_path):
    """2 processes x batch B take the same steps as 1 process x batch 2B (dropout is off)."""
    installed = installed_project(TABULAR_RAW)
    runs = tmp_path / "runs"
    common = ["--accelerator", "cpu", "--output-dir", str(runs), "--max-steps", "20"]
    common += ["--seed", "5", "--set", "train.num_workers=0"]
    ddp_train(installed, TABULAR_RAW, *common, "--batch-size", "32", "--name", "two")
    # The same 64 samples a step again, as 2 processes x 2 micro-batches of 16: gradients
    # accumulate locally and are all-reduced once, on the last micro-step.
    accumulate = ["--batch-size", "16", "--set", "train.accumulate=2", "--name", "two-x2"]
    ddp_train(installed, TABULAR_RAW, *common, *accumulate)
    (one,) = installed.drive(
        ["train", *common, "--devices", "1", "--batch-size", "64"]
        + [
            "--name",
            "one",
        ]
    )
    one.check()

    def final_state(name: str) -> tuple[dict, dict]:
        checkpoint = torch.load(runs / name / "checkpoints" / "last.ckpt", weights_only=True)
        return checkpoint["model"], checkpoint["progress"]

    one, one_state = final_state("one")
    assert one_state["step"] == 20
    for name in ("two", "two-x2"):
        other, other_state = final_state(name)
        assert other_state["step"] == 20
        difference = max((other[key] - one[key]).abs().max().item() for key in one)
        print(f"{name}: max parameter difference after 20 steps: {difference:.3g}")
        assert difference < 1e-5


@pytest.mark.timeout(600)
@TABULAR_RAW_GROUP
def test_two_nodes_on_loopback_train_one_run(installed_project, tmp_path):
    """Two torchrun launches, --nnodes=2 and one process each, meet on 127.0.0.1."""
    installed = installed_project(TABULAR_RAW)
    runs = tmp_path / "runs"
    endpoint = f"127.0.0.1:{free_port()}"
    rendezvous = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    rendezvous += [f"--rdzv-endpoint={endpoint}", "--rdzv-id=loopback"]
    command = torchrun(*rendezvous, "-m", installed.package, "train", "--accelerator", "cpu")
    command += ["--output-dir", str(runs), "--name", "multi-node", *short(TABULAR_RAW["task"])]
    command += ["--set", "train.num_workers=0"]
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
        outputs = [node.communicate(timeout=300) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (stdout, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, (stdout + stderr)[-3000:]
    assert [p.name for p in runs.iterdir()] == ["multi-node"]
    # One node, rank 0, printed the run; the other printed nothing.
    printed = sorted((stdout for stdout, _ in outputs), key=len)
    assert printed[0] == "", printed[0]
    _, best = check_run(TABULAR_RAW["task"], runs / "multi-node", printed[1])
    assert_learned(TABULAR_RAW["task"], best, read_baseline(runs / "multi-node"))
