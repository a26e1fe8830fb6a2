"""The SLURM batch script (the `slurm` extra, on by default for multi-gpu projects), without
SLURM: fake `srun` (which runs its command) and `scontrol` (which records what it is asked
and names this host). USR1, which SLURM sends to the job's tasks before its time limit,
requeues the job; the script run again under the same job id resumes the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import combination_id, command_env, evaluations
from test_robust import CPU, checkpoint_step
from test_robust_signals import wait_for

# Image classification: steps slow enough on a CPU for the signal to land mid-run.
RUN = [*CPU, "--precision", "32", "train.num_workers=0", "train.patience=0"]
RUN += ["--max-steps", "20", "train.eval_every=5", "--seed", "3"]
COMBINATIONS = [
    {"task": "image-classification", "framework": framework, "hardware": "multi-gpu"}
    for framework in ("raw", "lightning")
]


def fake_slurm(folder: Path, python: Path) -> dict[str, str]:
    """Executables standing in for SLURM's, and the environment of a one-node job."""
    folder.mkdir()
    scripts = {
        "srun": 'echo $$ > "$SRUN_PID"\nexec "$@"\n',  # the task's process id, for a signal
        "scontrol": 'echo "$*" >> "$SCONTROL_LOG"\n'
        # SLURM ends a requeued job's tasks (Lightning's handler goes on training until then).
        'if [ "$1" = requeue ] && [ -n "${KILL_ON_REQUEUE:-}" ]; then\n'
        '  kill -9 "$(cat "$SRUN_PID")"\n'
        "fi\n"
        'if [ "$1 $2" = "show hostnames" ]; then echo localhost; fi\n',
    }
    for name, body in scripts.items():
        (folder / name).write_text("#!/bin/bash\n" + body)
        (folder / name).chmod(0o755)
    return {
        "PATH": f"{folder}{os.pathsep}{python.parent}{os.pathsep}{os.environ['PATH']}",
        "SCONTROL_LOG": str(folder / "scontrol.log"),
        "SRUN_PID": str(folder / "srun.pid"),
        "SLURM_NNODES": "1",
        "SLURM_JOB_NODELIST": "localhost",
        # What Lightning's SLURMEnvironment reads (one task of a one-node job).
        "SLURM_NODELIST": "localhost",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NAME": "train",
    }


def sbatch(project: Path, env: dict[str, str], job: int) -> subprocess.Popen:
    """The batch script, as SLURM would start it (job `job`), with the run's settings."""
    return subprocess.Popen(
        ["bash", "scripts/slurm.sbatch", *RUN],
        cwd=project,
        env=command_env({**env, "SLURM_JOB_ID": str(job)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, code: int = 0) -> str:
    output, _ = process.communicate(timeout=400)
    assert process.returncode == code, output[-6000:]
    assert "Traceback" not in output, output[-6000:]
    return output


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "combination",
    [
        pytest.param(c, id=c["framework"], marks=pytest.mark.xdist_group(combination_id(c)))
        for c in COMBINATIONS
    ],
)
def test_the_time_limit_signal_requeues_and_the_job_resumes(
    combination, installed_project, tmp_path
):
    """Raw stops after its step with last.ckpt and requeues the job, which resumes exactly;
    Lightning's SLURM plugin saves hpc_ckpt_1.ckpt and requeues, and the script resumes
    from that newer checkpoint (not step-exact: see the README)."""
    installed = installed_project(combination)
    env = fake_slurm(tmp_path / "bin", installed.python)
    log = Path(env["SCONTROL_LOG"])
    runs = installed.project / "runs"
    job, reference = 4000 + os.getpid() % 1000, 5000 + os.getpid() % 1000
    run_dir = runs / f"slurm-{job}"
    if combination["framework"] == "lightning":
        env["KILL_ON_REQUEUE"] = "1"
    process = sbatch(installed.project, env, job)
    wait_for(run_dir / "checkpoints" / "last.ckpt", process)
    os.kill(int(Path(env["SRUN_PID"]).read_text()), signal.SIGUSR1)
    if combination["framework"] == "raw":
        output = finish(process, 128 + signal.SIGUSR1)
        assert "interrupted (SIGUSR1)" in output, output
        stopped_at = checkpoint_step(run_dir / "checkpoints" / "last.ckpt")
    else:  # Lightning saves and requeues, then SLURM ends the job
        process.communicate(timeout=400)
        stopped_at = checkpoint_step(run_dir / "hpc_ckpt_1.ckpt")
    assert log.read_text().splitlines()[-1] == f"requeue {job}"
    assert stopped_at < 20, stopped_at

    # The requeued job: same job id, same command; it finds its checkpoint and resumes.
    output = finish(sbatch(installed.project, env, job))
    assert f"resuming runs/slurm-{job}" in output, output
    assert log.read_text().count("requeue") == 1, "requeued without a signal"
    assert checkpoint_step(run_dir / "checkpoints" / "last.ckpt") == 20
    steps = [row["step"] for row in evaluations(run_dir)]
    assert steps == sorted(set(steps)) and steps[-1] == 20, steps
    if combination["framework"] == "raw":  # exactly as a job that is never stopped
        finish(sbatch(installed.project, env, reference))
        never = runs / f"slurm-{reference}"
        assert (run_dir / "metrics.csv").read_text() == (never / "metrics.csv").read_text()
