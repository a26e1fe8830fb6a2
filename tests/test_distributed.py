"""The DDP code of the multi-gpu projects, run for real on the CPU with the gloo backend.

Raw projects are launched by torchrun, Lightning ones with --devices 2. Every test has a
timeout and every launch its own free port, so that a broken rendezvous fails, not hangs;
the engines destroy their process group when they finish.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
from conftest import (
    COMBINATIONS,
    RUN_FILES,
    assert_learned,
    combination_id,
    command_env,
    install,
    package_of,
    read_metrics,
    render,
    render_combination,
    run,
    run_files,
)

# One worker runs them one after the other: two DDP jobs at once could race for a port.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("distributed")]

MULTI_GPU = [c for c in COMBINATIONS if c["hardware"] == "multi-gpu"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("combination", MULTI_GPU, ids=combination_id)
def test_ddp_on_two_cpu_processes_learns_writes_once_and_resumes(
    combination, template_copy, tmp_path
):
    project = render_combination(template_copy, tmp_path / "project", combination)
    installed = install(project, tmp_path / "venv")
    runs = tmp_path / "runs"
    common = ["--accelerator", "cpu", "--output-dir", str(runs)]
    if combination["task"] != "image-classification":
        # In-memory data needs no loader processes on the CPU (the cpu projects' default).
        # The image projects keep their default: loader processes under DDP.
        common += ["--set", "train.num_workers=0"]
    port = {"MASTER_PORT": str(free_port())}
    if combination["framework"] == "raw":
        launch = ["--standalone", "--nproc-per-node=2", "-m", package_of(combination)]
        run(
            torchrun(*launch, "train", *common, "--name", "ddp"),
            cwd=project,
            timeout=300,
            env={"PYTHONPATH": str(project / "src")},
        )
    else:
        installed.run("train", *common, "--devices", "2", "--name", "ddp", env=port, timeout=300)

    run_dir = runs / "ddp"
    assert [p.name for p in runs.iterdir()] == ["ddp"], "a second rank wrote a run folder"
    assert run_files(run_dir) == RUN_FILES
    history = read_metrics(run_dir)
    epochs = len(history)
    assert [row["epoch"] for row in history] == list(range(epochs))
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(lines) == len(set(lines)), "a second rank logged the same rows"
    installed.run("export", "--checkpoint", str(run_dir / "checkpoints" / "best.ckpt"))
    meta = json.loads((run_dir / "checkpoints" / "best.json").read_text())
    assert_learned(combination["task"], history[-1], meta)

    # Every rank resumes from the same checkpoint, under DDP again (raw: --devices 2 now
    # relaunches itself through torchrun).
    port = {"MASTER_PORT": str(free_port())}
    more = ["--resume", "last", "--epochs", str(epochs + 1), "--devices", "2"]
    more += ["--set", "train.patience=0"]  # it may have stopped early
    installed.run("train", *common, *more, env=port, timeout=300)
    resumed = read_metrics(run_dir)
    assert [row["epoch"] for row in resumed] == list(range(epochs + 1))
    assert resumed[:epochs] == history
    assert resumed[-1]["step"] > history[-1]["step"]
    assert [p.name for p in runs.iterdir()] == ["ddp"]


@pytest.mark.timeout(600)
def test_raw_ddp_equals_one_process_with_twice_the_batch(template_copy, tmp_path):
    """2 processes x batch B take the same steps as 1 process x batch 2B (dropout is off)."""
    project = render(
        template_copy,
        tmp_path / "project",
        project_name="same-steps",
        task="tabular-regression",
        framework="raw",
        hardware="multi-gpu",
    )
    installed = install(project, tmp_path / "venv")
    runs = tmp_path / "runs"
    common = ["--accelerator", "cpu", "--output-dir", str(runs), "--epochs", "2", "--seed", "5"]
    common += ["--set", "train.num_workers=0"]
    launch = ["--standalone", "--nproc-per-node=2", "-m", "same_steps"]
    run(
        torchrun(*launch, "train", *common, "--batch-size", "32", "--name", "two"),
        cwd=project,
        timeout=300,
        env={"PYTHONPATH": str(project / "src")},
    )
    # The same 64 samples a step again, as 2 processes x 2 micro-batches of 16: gradients
    # accumulate locally and are all-reduced once, on the last micro-step.
    accumulate = ["--batch-size", "16", "--set", "train.accumulate=2", "--name", "two-x2"]
    run(
        torchrun(*launch, "train", *common, *accumulate),
        cwd=project,
        timeout=300,
        env={"PYTHONPATH": str(project / "src")},
    )
    installed.run("train", *common, "--devices", "1", "--batch-size", "64", "--name", "one")

    def final_state(name: str) -> tuple[dict, dict]:
        checkpoint = torch.load(runs / name / "checkpoints" / "last.ckpt", weights_only=True)
        return checkpoint["model"], checkpoint["state"]

    one, one_state = final_state("one")
    assert one_state["step"] == 50
    for name in ("two", "two-x2"):
        other, other_state = final_state(name)
        assert other_state["step"] == 50
        difference = max((other[key] - one[key]).abs().max().item() for key in one)
        print(f"{name}: max parameter difference after 50 steps: {difference:.3g}")
        assert difference < 1e-5


@pytest.mark.timeout(600)
def test_two_nodes_on_loopback_train_one_run(template_copy, tmp_path):
    """Two torchrun launches, --nnodes=2 and one process each, meet on 127.0.0.1."""
    project = render(
        template_copy,
        tmp_path / "project",
        project_name="two-nodes",
        task="tabular-regression",
        framework="raw",
        hardware="multi-gpu",
    )
    runs = tmp_path / "runs"
    endpoint = f"127.0.0.1:{free_port()}"
    rendezvous = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d"]
    rendezvous += [f"--rdzv-endpoint={endpoint}", "--rdzv-id=loopback"]
    command = torchrun(*rendezvous, "-m", "two_nodes", "train", "--accelerator", "cpu")
    command += ["--output-dir", str(runs), "--name", "multi-node", "--epochs", "4"]
    command += ["--set", "train.num_workers=0"]
    env = command_env({"PYTHONPATH": str(project / "src")})
    nodes = [
        subprocess.Popen(
            command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(2)
    ]
    try:
        outputs = [node.communicate(timeout=300)[0].decode() for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, output in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, output[-3000:]
    assert [p.name for p in runs.iterdir()] == ["multi-node"]
    assert run_files(runs / "multi-node") == RUN_FILES
    history = read_metrics(runs / "multi-node")
    assert len(history) == 4
    assert history[-1]["val/loss"] < 0.5 * history[0]["val/loss"]
    # Rank 0 alone printed the epochs.
    assert sum(output.count("epoch 4/4") for output in outputs) == 1
