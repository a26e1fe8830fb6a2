"""A language model on corpora of any size: how fast a text file is prepared (encoded into
its token file), how much memory training on it takes, and how soon a run starts.

    python benchmarks/lm_corpus.py [--size-mb 1024] [--steps 100] [--framework raw]

The corpus is the Python standard library's own source, repeated to --size-mb (written once
into a temporary folder; nothing is downloaded). Then:

1. Preparation: the project's build_datasets on it, in this process, as `train --data`
   runs it (char tokenizer): wall and CPU seconds, beside a reference measured in the same
   run, reading and decoding the file from UTF-8 and nothing else (machines and their load
   differ; the ratio travels).
2. `train --data big.txt --max-steps N`, a fresh process started as the console script
   would be, reading the token file made in 1: its peak resident memory (from the kernel's
   accounting of the finished process) and the time to its first optimizer step.
3. A new 4 MB file (nothing cached): seconds from the process start to the first
   optimizer step, the median of --repeat runs, beside `python -c "import torch"`.
4. The byte-level BPE (`data.tokenizer=bpe`) learned and applied on a --bpe-mb file.

Targets (2-core CPU): preparation >= 50 MB/s, training peak memory <= 1.5 GB on 1 GB of
text; the 4 MB file's first optimizer step within 5 s of the process start.
"""

from __future__ import annotations

import argparse
import codecs
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from copier import run_copy

from generator.questions import template_root

# Loaded by every Python process started with this folder on PYTHONPATH: prints the time of
# the first optimizer step, from STARTUP_T0 (set just before the process started).
SITECUSTOMIZE = """
import os, sys, time
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
def _first_step(optimizer, args, kwargs):
    if not _first_step.seen:
        _first_step.seen = True
        start = float(os.environ["STARTUP_T0"])
        print(f"FIRST_STEP {time.time() - start:.3f}", file=sys.stderr, flush=True)
_first_step.seen = False
register_optimizer_step_post_hook(_first_step)
"""


def corpus(path: Path, megabytes: float) -> Path:
    """The standard library's .py files, in order, repeated to `megabytes` (10**6 bytes)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = "".join(
        file.read_text(encoding="utf-8", errors="replace") for file in sorted(stdlib.glob("*.py"))
    ).encode("utf-8")
    size = int(megabytes * 10**6)
    with path.open("wb") as out:
        for _ in range(size // len(text)):
            out.write(text)
        rest = size % len(text)
        while rest and text[rest] & 0xC0 == 0x80:  # end on a whole character
            rest -= 1
        out.write(text[:rest])
    return path


# Runs a command and reports its peak resident memory: the only child of this wrapper.
PEAK = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
    "file=sys.stderr); sys.exit(code)"
)


def run(command: list[str], cwd: Path, env: dict) -> dict:
    """A process's wall time, first optimizer step, preparation time and peak RSS (MB)."""
    start = time.time()
    result = subprocess.run(
        [sys.executable, "-c", PEAK, *command],
        cwd=cwd,
        env={**os.environ, **env, "STARTUP_T0": str(start)},
        capture_output=True,
        text=True,
    )
    seconds = time.time() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    first = re.search(r"FIRST_STEP ([\d.]+)", result.stderr)
    ready = re.search(r"ready in ([\d.]+) s", result.stdout)
    return {
        "seconds": seconds,
        "first_step": float(first.group(1)) if first else None,
        "ready": float(ready.group(1)) if ready else None,
        "peak_mb": int(re.search(r"PEAK_RSS_KB (\d+)", result.stderr).group(1)) / 1024,
    }


def prepare(project: Path, path: Path, output: Path, *settings: str) -> dict:
    """Encode a text as `train --data` does (build_datasets), in this process: wall and CPU
    seconds, and how much this process's peak memory grew (resource.ru_maxrss)."""
    sys.path.insert(0, str(project / "src"))
    from bench.config import Config
    from bench.data import build_datasets
    from bench.plumbing.settings import load_config

    flags = {"data.path": str(path), "train.output_dir": str(output)}
    cfg = load_config(Config, [], list(settings), flags)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    wall, cpu = time.perf_counter(), time.process_time()
    build_datasets(cfg)
    return {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "grew_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024,
    }


def read_and_decode(path: Path) -> dict:
    """The reference: the text read and decoded from UTF-8 a megabyte at a time, nothing else."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    wall, cpu = time.perf_counter(), time.process_time()
    with path.open("rb") as file:
        while chunk := file.read(2**20):
            decoder.decode(chunk)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1024)
    parser.add_argument("--bpe-mb", type=float, default=16)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--framework", default="raw", choices=["raw", "lightning"])
    args = parser.parse_args()
    python = sys.executable
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "hook").mkdir()
        (tmp / "hook" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        source = tmp / "template"
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
        project = tmp / "project"
        answers = {"task": "language-modeling", "framework": args.framework}
        run_copy(
            str(source),
            project,
            data={**answers, "project_name": "bench"},
            defaults=True,
            quiet=True,
        )
        env = {"PYTHONPATH": f"{tmp / 'hook'}{os.pathsep}{project / 'src'}"}
        runs = tmp / "runs"
        train = [python, "-m", "bench", "train", "--accelerator", "cpu", "--output-dir", str(runs)]
        budget = ["--max-steps", str(args.steps), f"train.eval_every={args.steps // 2}"]

        big = corpus(tmp / "big.txt", args.size_mb)
        megabytes = big.stat().st_size / 10**6
        reference = read_and_decode(big)
        made = prepare(project, big, runs)
        print(
            f"{megabytes:.0f} MB of text, char: prepared in {made['wall']:.1f} s "
            f"({megabytes / made['wall']:.0f} MB/s; target >= 50) and {made['cpu']:.1f} s of "
            f"CPU ({megabytes / made['cpu']:.0f} MB per CPU second), peak memory "
            f"+{made['grew_mb']:.0f} MB; reading and decoding it alone: "
            f"{megabytes / reference['wall']:.0f} MB/s, {megabytes / reference['cpu']:.0f} MB "
            "per CPU second"
        )
        trained = run([*train, "--data", str(big), *budget], project, env)
        print(
            f"{args.steps} steps on it, from the token file: peak RSS {trained['peak_mb']:.0f} MB "
            f"(target <= 1536), first optimizer step at {trained['first_step']:.2f} s, whole "
            f"run {trained['seconds']:.1f} s"
        )
        big.unlink()
        shutil.rmtree(runs)

        torch_s = statistics.median(
            run([python, "-c", "import torch"], project, {})["seconds"] for _ in range(args.repeat)
        )
        steps = []
        for i in range(args.repeat):
            small = corpus(tmp / f"small-{i}.txt", 4)  # a new file: nothing cached
            steps.append(run([*train, "--data", str(small), *budget], project, env)["first_step"])
        print(
            f"4 MB of text, char, nothing cached: first optimizer step at "
            f"{statistics.median(steps):.2f} s (median of {args.repeat}; target <= 5; "
            f"import torch {torch_s:.2f} s)"
        )

        text = corpus(tmp / "bpe.txt", args.bpe_mb)
        made = prepare(project, text, runs, "data.tokenizer=bpe")
        print(
            f"{args.bpe_mb:.0f} MB of text, bpe (1024 tokens): learned and encoded in "
            f"{made['wall']:.1f} s ({args.bpe_mb / made['wall']:.1f} MB/s), "
            f"{made['cpu']:.1f} s of CPU"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
