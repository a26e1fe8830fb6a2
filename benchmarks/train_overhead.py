"""What each training engine costs beyond a hand-written loop, per task (built-in data, CPU).

    python benchmarks/train_overhead.py [--repeat 3] [--tasks text-classification ...]

For each task, the raw and the Lightning cpu projects are generated, then three kinds of
run alternate, each in a fresh process (benchmarks/overhead_worker.py): the reference loop
written in the benchmark, the raw engine, the Lightning engine. Each process imports,
warms up with a short run, then times a run of the same number of optimizer steps, so
imports and first-call costs are left out (benchmarks/startup.py measures those). The table
gives the median seconds, steps per second, peak memory, and two ratios of speed:
raw / reference (target >= 0.95) and Lightning / raw (target >= 0.90).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from copier import run_copy

from generator.questions import template_root

HERE = Path(__file__).resolve().parent
# Steps per timed run: a few seconds of training for each task on a 2-core CPU.
STEPS = {
    "image-classification": 150,
    "text-classification": 1500,
    "tabular-regression": 1500,
    "language-modeling": 150,
}
KINDS = ("reference", "raw", "lightning")
HEADER = """\
| task | steps | reference s | raw s | Lightning s | steps/s ref / raw / L | raw / ref \
| L / raw | peak RSS MB ref / raw / L |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |"""


def generate(tmp: Path, task: str, framework: str, **answers: str) -> Path:
    source = tmp / "template"
    if not source.exists():  # a copy outside git: Copier renders it as it is
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
    project = tmp / f"{task}-{framework}"
    data = {"task": task, "framework": framework, "project_name": f"bench-{framework}", **answers}
    run_copy(str(source), project, data=data, defaults=True, quiet=True)
    return project


def measure(kind: str, project: Path, steps: int, extra: list[str]) -> dict:
    command = [sys.executable, str(HERE / "overhead_worker.py"), kind, str(project), str(steps)]
    result = subprocess.run(command + extra, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{kind} {project.name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tasks", nargs="*", default=list(STEPS))
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--set", action="append", default=[], dest="settings")
    args = parser.parse_args()
    extra = ["--accelerator", args.accelerator] + [f"--set={item}" for item in args.settings]
    rows = []
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            projects = {
                "reference": generate(Path(tmp), task, "raw"),
                "raw": Path(tmp) / f"{task}-raw",
                "lightning": generate(Path(tmp), task, "lightning"),
            }
            runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
            for repeat in range(args.repeat):
                order = KINDS[repeat % 3 :] + KINDS[: repeat % 3]  # interleaved, rotating
                for kind in order:
                    runs[kind].append(measure(kind, projects[kind], STEPS[task], extra))
            seconds = {k: statistics.median(r["seconds"] for r in runs[k]) for k in KINDS}
            memory = {k: max(r["rss_mb"] for r in runs[k]) for k in KINDS}
            rows.append((task, STEPS[task], seconds, memory))
            print_row(*rows[-1])
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    table = [
        {"task": task, "steps": steps, "seconds": seconds, "peak_rss_mb": memory}
        for task, steps, seconds, memory in rows
    ]
    (results / "train_overhead.json").write_text(json.dumps(table, indent=2))


def print_row(task: str, steps: int, seconds: dict, memory: dict) -> None:
    rate = " / ".join(f"{steps / seconds[k]:.0f}" for k in KINDS)
    rss = " / ".join(f"{memory[k]:.0f}" for k in KINDS)
    print(
        f"| {task} | {steps} | {seconds['reference']:.2f} | {seconds['raw']:.2f} "
        f"| {seconds['lightning']:.2f} | {rate} | {seconds['reference'] / seconds['raw']:.2f} "
        f"| {seconds['raw'] / seconds['lightning']:.2f} | {rss} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
