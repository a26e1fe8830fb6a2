"""How long a command takes to start: `train` to its first optimizer step and to its end,
raw and Lightning; the generated command's `--help`; `scaffold --help` and `scaffold new`
as whole processes. And what the README's "trains in seconds on a CPU" costs: the CPU time
(user + sys, of the process and its children) of each task's default built-in run, `train`
with no flag, both engines.

    python benchmarks/startup.py [--repeat 5] [--only startup|default-runs] [--threads N]

`--threads N` runs the default runs with OMP_NUM_THREADS=N: on a machine that other work
keeps busy, torch's idle threads spin and their CPU time measures the load, not the run.

References measured in the same run: `python -c "import torch"` and `python -c "import
torch, lightning"`. The first optimizer step is seen from outside: the run is started as
the console script would start it, with `sitecustomize` on the path wrapping
torch.optim.Optimizer.step to print the time of its first call. Targets (this machine):
raw first step <= import torch + 1.0 s; Lightning first step <= import torch + import
lightning + 1.0 s; `scaffold new` < 1.5 s; `scaffold --help` and the generated command's
`--help` (`python -m bench --help`: the console script's import of the package and Typer,
torch left out) < 0.5 s; a default built-in run < 20 s of CPU time, ended by its own
stopping rule (printed: why it stopped).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from copier import run_copy

from generator.questions import template_root

BARE_STEP = """
import torch
model = torch.nn.Linear(2, 2)
optimizer = torch.optim.AdamW(model.parameters())
model(torch.ones(1, 2)).sum().backward()
optimizer.step()
"""
DEFAULT_RUN_CPU_S = 20.0  # the target of a default built-in run, in CPU seconds
TASKS = ["image-classification", "text-classification", "tabular-regression", "language-modeling"]
# Loaded by every Python process started with this folder on PYTHONPATH.
SITECUSTOMIZE = """
import os, sys, time
import torch  # the train command imports it anyway; here, first, to hook its optimizers
from torch.optim.optimizer import register_optimizer_step_post_hook
def _first_step(optimizer, args, kwargs):
    if not _first_step.seen:
        _first_step.seen = True
        start = float(os.environ["STARTUP_T0"])
        print(f"FIRST_STEP {time.time() - start:.3f}", file=sys.stderr, flush=True)
_first_step.seen = False
register_optimizer_step_post_hook(_first_step)
"""


def timed(
    command: list[str], cwd: Path | None = None, env: dict | None = None
) -> tuple[float, str]:
    start = time.time()
    env = {**os.environ, **(env or {}), "STARTUP_T0": str(start)}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return time.time() - start, result.stderr


def cpu_timed(command: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """A process's wall time, CPU time (user + sys, its children's too) and stdout."""
    start = time.time()
    with tempfile.TemporaryFile("w+") as out:
        process = subprocess.Popen(
            command, cwd=cwd, env={**os.environ, **env}, stdout=out, stderr=subprocess.PIPE
        )
        before = os.times()
        stderr = process.stderr.read().decode(errors="replace")
        process.wait()
        after = os.times()
        out.seek(0)
        stdout = out.read()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return time.time() - start, cpu, stdout


def default_runs(projects: dict, repeat: int, threads: int | None) -> None:
    """Each task's default built-in run, `train` with no flag: its CPU time and its end."""
    print(f"threads: {threads or 'torch default'}; load average: {os.getloadavg()[0]:.1f}")
    target = f"< {DEFAULT_RUN_CPU_S:.0f} s"
    print(f"| task | framework | CPU s (user+sys) | wall s | steps | stopped by | {target} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (task, framework), project in projects.items():
        env = {"PYTHONPATH": str(project / "src")}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        cpus, walls = [], []
        for i in range(repeat):
            command = [sys.executable, "-m", "bench", "train", "--name", f"default-{i}"]
            wall, cpu, stdout = cpu_timed(command, project, env)
            cpus.append(cpu)
            walls.append(wall)
        stopped = next(line for line in stdout.splitlines() if line.startswith("stopped: "))
        why = stopped.removeprefix("stopped: ").split(":")[0].split(" (")[0]
        steps = last_step(project / "runs" / f"default-{repeat - 1}" / "metrics.csv")
        cpu = statistics.median(cpus)
        print(
            f"| {task} | {framework} | {cpu:.1f} | {statistics.median(walls):.1f} | {steps} "
            f"| {why} | {'yes' if cpu < DEFAULT_RUN_CPU_S else 'NO'} |",
            flush=True,
        )


def last_step(metrics_csv: Path) -> int:
    """The last step in a run's metrics.csv."""
    with metrics_csv.open(newline="") as file:
        return max(int(float(row["step"])) for row in csv.DictReader(file) if row["step"])


def first_step(stderr: str) -> float:
    return float(
        next(line.split()[1] for line in stderr.splitlines() if line.startswith("FIRST_STEP"))
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["startup", "default-runs"])
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the default runs")
    args = parser.parse_args()
    python = sys.executable
    median = statistics.median
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "hook").mkdir()
        (tmp / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        source = tmp / "template"
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
        projects = {}
        for task in TASKS:
            for framework in ("raw", "lightning"):
                project = tmp / f"{task}-{framework}"
                data = {"task": task, "framework": framework, "project_name": "bench"}
                run_copy(str(source), project, data=data, defaults=True, quiet=True)
                projects[task, framework] = project
        if args.only == "default-runs":
            default_runs(projects, args.repeat, args.threads)
            return

        torch_s = median(timed([python, "-c", "import torch"])[0] for _ in range(args.repeat))
        both_s = median(
            timed([python, "-c", "import torch, lightning"])[0] for _ in range(args.repeat)
        )
        # What any PyTorch loop pays before its first step: the first optimizer imports
        # torch._dynamo (torch/optim/optimizer.py), a cost of torch, not of the project.
        bare_s = median(timed([python, "-c", BARE_STEP])[0] for _ in range(args.repeat))
        print(
            f"reference: import torch {torch_s:.2f} s, import torch + lightning {both_s:.2f} s, "
            f"import torch + one AdamW step on a Linear {bare_s:.2f} s"
        )
        print("| task | framework | first step s | target | end s | over the target |")
        print("| --- | --- | --- | --- | --- | --- |")
        for (task, framework), project in projects.items():
            env = {"PYTHONPATH": f"{tmp / 'hook'}{os.pathsep}{project / 'src'}"}
            steps, ends = [], []
            for i in range(args.repeat):
                command = [python, "-m", "bench", "train", "--max-steps", "20", "--name", str(i)]
                end, stderr = timed(command, cwd=project, env=env)
                steps.append(first_step(stderr))
                ends.append(end)
            target = (torch_s if framework == "raw" else both_s) + 1.0
            step = median(steps)
            print(
                f"| {task} | {framework} | {step:.2f} | {target:.2f} | {median(ends):.2f} "
                f"| {max(0.0, step - target):+.2f} |"
            )

        # The generated command's --help: the package and Typer, torch imported by the
        # commands only (the hook above imports torch: left out here).
        for framework in ("raw", "lightning"):
            project = projects[TASKS[0], framework]
            env = {"PYTHONPATH": str(project / "src")}
            command = [python, "-m", "bench", "--help"]
            seconds = median(timed(command, cwd=project, env=env)[0] for _ in range(args.repeat))
            print(f"bench --help ({framework}): {seconds:.2f} s (target < 0.5 s)")
        scaffold = [python, "-m", "generator"]
        helps = [timed(scaffold + ["--help"])[0] for _ in range(args.repeat)]
        news = []
        for i in range(args.repeat):
            dest = tmp / f"new-{i}"
            news.append(timed(scaffold + ["new", str(dest), "--defaults", "--no-git"])[0])
        print(f"scaffold --help: {median(helps):.2f} s (target < 0.5 s)")
        print(f"scaffold new: {median(news):.2f} s (target < 1.5 s)")
        if args.only is None:
            default_runs(projects, args.repeat, args.threads)


if __name__ == "__main__":
    main()
