"""What each training engine costs beyond a hand-written loop, per task (built-in data, CPU).

    python benchmarks/train_overhead.py [--repeat 3] [--tasks text-classification ...]

For each task, the raw and the Lightning cpu projects are generated, then four kinds of
run alternate, each in a fresh process in the project's folder (benchmarks/overhead_worker.py):
the hand-written reference loop, the raw project, the Lightning project (each run as its
`train` command runs it), and Lightning's floor (the shortest LightningModule in a Trainer
with Lightning's defaults: its logger, progress bar and checkpointing on). Each process
imports, warms up with a short run, then times a run of STEPS optimizer steps and one of
2 x STEPS, so imports and first-call costs are left out (benchmarks/startup.py measures those).

Three tables: the run of STEPS steps as a whole (seconds; its ratios of speed), and the same
split in two by the longer run: the cost of a step in a long run (milliseconds, evaluations
and checkpoints included: the second run's extra time over its extra steps) and what a run
costs once (seconds: set-up, the baseline's evaluation, curves.png, the summary), in wall
time and in CPU time (user + system, all the process's threads: on a machine that other
work keeps busy, the steadier of the two, as long as each process has one thread). Targets
(issue 25.9), per step: raw / reference >= 0.95 and Lightning / floor >= 0.95 (a ratio of
speeds: above 1, faster). STEPS is a multiple of each task's evaluation interval, so that
every kind evaluates at its last step without asking Lightning's floor for more than its
defaults.
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
# Steps per timed run: a few seconds of training for each task on a 2-core CPU, and a
# multiple of the task's evaluation interval (an epoch of the built-in data: 16 batches of
# images, 25 of texts and of rows; the language model's eval_every, 100).
STEPS = {
    "image-classification": 160,
    "text-classification": 1500,
    "tabular-regression": 1500,
    "language-modeling": 200,
}
KINDS = ("reference", "raw", "lightning", "floor")
HEADER = """\
| task | steps | reference s | raw s | Lightning s | floor s | raw / ref | L / floor \
| peak RSS MB ref / raw / L / floor |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |"""
SPLIT_HEADER = """\
| task | ms a step ref / raw / L / floor | raw / ref | L / floor \
| once, s: ref / raw / L / floor |
| --- | --- | --- | --- | --- |"""
CPU_HEADER = SPLIT_HEADER.replace("| ms a step", "| CPU ms a step").replace(
    "once, s", "once, CPU s"
)


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
    result = subprocess.run(
        command + extra, cwd=project, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{kind} {project.name} failed:\n{result.stderr[-3000:]}")
    figures = json.loads(result.stdout.splitlines()[-1])
    print(json.dumps({"kind": kind, "project": project.name, **figures}), file=sys.stderr)
    return figures


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
                "floor": Path(tmp) / f"{task}-raw",
            }
            runs: dict[str, list[dict]] = {kind: [] for kind in KINDS}
            for repeat in range(args.repeat):
                turn = repeat % len(KINDS)
                for kind in KINDS[turn:] + KINDS[:turn]:  # interleaved, rotating
                    runs[kind].append(measure(kind, projects[kind], STEPS[task], extra))
            rows.append(summarize(task, STEPS[task], runs))
            print_row(rows[-1])
    write_results(rows, "train_overhead")


def summarize(task: str, steps: int, runs: dict[str, list[dict]]) -> dict:
    """Medians over the repeats: seconds of the run of `steps`, and its split into the cost
    of a step (from the run of twice as many) and the cost of a run."""
    row = {"task": task, "steps": steps, "seconds": {}}
    for clock, prefix in (("seconds", ""), ("cpu_seconds", "cpu_")):
        row[f"{prefix}ms_a_step"], row[f"{prefix}once_s"] = {}, {}
        for kind, results in runs.items():
            short = [r[clock] for r in results]
            step = [(r[f"{clock}_double"] - r[clock]) / steps for r in results]
            if clock == "seconds":
                row["seconds"][kind] = statistics.median(short)
            row[f"{prefix}ms_a_step"][kind] = 1000 * statistics.median(step)
            row[f"{prefix}once_s"][kind] = statistics.median(
                s - steps * p for s, p in zip(short, step, strict=True)
            )
    row["peak_rss_mb"] = {kind: max(r["rss_mb"] for r in runs[kind]) for kind in runs}
    return row


def write_results(rows: list[dict], name: str) -> None:
    """Both tables again, after the rows printed as they came, and the figures as JSON."""
    print("\n" + HEADER)
    for row in rows:
        print_row(row)
    print("\n" + SPLIT_HEADER)
    for row in rows:
        print_split(row)
    print("\n" + CPU_HEADER)
    for row in rows:
        print_split(row, "cpu_")
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(rows, indent=2))


def print_row(row: dict) -> None:
    seconds, rss = row["seconds"], row["peak_rss_mb"]
    memory = " / ".join(f"{rss[k]:.0f}" for k in KINDS)
    print(
        f"| {row['task']} | {row['steps']} | {seconds['reference']:.2f} | {seconds['raw']:.2f} "
        f"| {seconds['lightning']:.2f} | {seconds['floor']:.2f} "
        f"| {seconds['reference'] / seconds['raw']:.2f} "
        f"| {seconds['floor'] / seconds['lightning']:.2f} | {memory} |",
        flush=True,
    )


def print_split(row: dict, prefix: str = "") -> None:
    step, once = row[f"{prefix}ms_a_step"], row[f"{prefix}once_s"]
    print(
        f"| {row['task']} | {' / '.join(f'{step[k]:.3f}' for k in KINDS)} "
        f"| {step['reference'] / step['raw']:.2f} | {step['floor'] / step['lightning']:.2f} "
        f"| {' / '.join(f'{once[k]:.2f}' for k in KINDS)} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
