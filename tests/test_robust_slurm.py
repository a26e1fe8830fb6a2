"""The SLURM batch script of multi-gpu projects, without SLURM: fake `srun` (which runs its
command) and `scontrol` (which records what it is asked and names this host), a USR1 sent
to the script as SLURM sends it before the time limit, then the script run again as a
requeued job (same job id), which must resume and end as if never stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import command_env
from test_robust import CPU, checkpoint_step, installer

pytestmark = pytest.mark.slow

# Image classification: steps slow enough on a CPU for the signal to land mid-run.
RUN = [*CPU, "--max-steps", "20", "--set", "train.eval_every=5", "--seed", "3"]


@pytest.fixture(scope="session")
def installed(tmp_path_factory):
    return installer(tmp_path_factory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_slurm(folder: Path, python: Path) -> dict[str, str]:
    """Executables standing in for SLURM's, and the environment of a one-node job."""
    folder.mkdir()
    scripts = {
        "srun": 'exec "$@"\n',
        "scontrol": 'echo "$*" >> "$SCONTROL_LOG"\n'
        'if [ "$1 $2" = "show hostnames" ]; then echo localhost; fi\n',
        # The project's own interpreter: the torchrun of PATH is another environment's.
        "torchrun": f'exec "{python}" -m torch.distributed.run "$@"\n',
    }
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/bash\n" + body)
        (folder / name).chmod(0o755)
    return {
        "PATH": f"{folder}{os.pathsep}{python.parent}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_LOG": str(folder / "scontrol.log"),
        "SLURM_NNODES": "1",
        "SLURM_GPUS_PER_NODE": "1",
        "SLURM_JOB_NODELIST": "localhost",
        "RDZV_PORT": str(free_port()),
        # What Lightning's SLURMEnvironment reads (one task of a one-node job).
        "SLURM_NODELIST": "localhost",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NAME": "train",
    }


def sbatch(project_root: Path, env: dict[str, str], job: int) -> subprocess.Popen:
    """The batch script, as SLURM would start it (job `job`), with the run's settings."""
    return subprocess.Popen(
        ["bash", "scripts/slurm.sbatch", *RUN],
        cwd=project_root,
        env=command_env({**env, "SLURM_JOB_ID": str(job)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=400)
    assert process.returncode == 0, output[-6000:]
    return output


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the job ended before {path} appeared"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.01)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("framework", ["raw", "lightning"])
def test_the_time_limit_signal_requeues_and_the_job_resumes_exactly(framework, installed, tmp_path):
    project = installed("image-classification", framework, "multi-gpu")
    env = fake_slurm(tmp_path / "bin", project.python)
    log = Path(env["SCONTROL_LOG"])
    runs = project.root / "runs"
    job, reference = 4000 + os.getpid() % 1000, 5000 + os.getpid() % 1000

    finish(sbatch(project.root, env, reference))  # a job that is never stopped

    # Two minutes before the time limit, SLURM sends USR1 to the batch script (B:).
    process = sbatch(project.root, env, job)
    wait_for(runs / f"slurm-{job}" / "checkpoints" / "last.ckpt", process)
    process.send_signal(signal.SIGUSR1)
    output = finish(process)
    assert "stopping after the current step, then requeueing" in output, output
    assert "interrupted (SIGTERM after step " in output, output
    assert log.read_text().splitlines()[-1] == f"requeue {job}"
    stopped_at = checkpoint_step(runs / f"slurm-{job}" / "checkpoints" / "last.ckpt")
    assert 5 <= stopped_at < 20, stopped_at  # the signal may come before step 5 ends

    # The requeued job: same job id, same command; it finds its checkpoint and resumes.
    output = finish(sbatch(project.root, env, job))
    assert f"resuming runs/slurm-{job}" in output, output
    assert log.read_text().count("requeue") == 1, "requeued without a signal"
    stopped, never = runs / f"slurm-{job}", runs / f"slurm-{reference}"
    assert (stopped / "metrics.csv").read_text() == (never / "metrics.csv").read_text()
    assert checkpoint_step(stopped / "checkpoints" / "last.ckpt") == 20


@pytest.mark.timeout(900)
def test_lightnings_own_requeue_signal_saves_an_hpc_checkpoint_to_resume(installed, tmp_path):
    """USR1 sent to the training process itself (`--signal=USR1@120`, without B:): Lightning's
    SLURM plugin saves hpc_ckpt_1.ckpt in the run's checkpoints/ and requeues the job, and
    `--resume last` takes that newer checkpoint. (Not step-exact: see the README.)"""
    project = installed("image-classification", "lightning", "multi-gpu")
    env = fake_slurm(tmp_path / "bin", project.python)
    env["SLURM_JOB_ID"] = "6161"
    runs = tmp_path / "runs"
    train = [str(project.script), "train", *RUN, "--output-dir", str(runs)]
    process = subprocess.Popen(
        [*train, "--name", "slurm-6161"],
        cwd=tmp_path,
        env=command_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    checkpoints = runs / "slurm-6161" / "checkpoints"
    wait_for(checkpoints / "last.ckpt", process)
    process.send_signal(signal.SIGUSR1)
    log = Path(env["SCONTROL_LOG"])
    deadline = time.monotonic() + 120
    while not (log.exists() and "requeue" in log.read_text()):
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.01)
    process.kill()  # SLURM ends the requeued job
    process.communicate(timeout=60)
    assert log.read_text().splitlines()[-1] == "requeue 6161"
    hpc = checkpoints / "hpc_ckpt_1.ckpt"
    assert hpc.stat().st_mtime > (checkpoints / "last.ckpt").stat().st_mtime
    saved_at = checkpoint_step(hpc)

    resumed = subprocess.run(
        [*train, "--resume", "last", "--name", "slurm-6161"],
        cwd=tmp_path,
        env=command_env(env),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    steps = [
        int(line.split(",")[0])
        for line in (checkpoints.parent / "metrics.csv").open()
        if line[0].isdigit()
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 20, steps
    assert any(step > saved_at for step in steps)
    assert not list(checkpoints.parent.rglob(".*.tmp"))
