"""How fast a tabular project reads a large CSV file: read, encoded and ready to train.

    python benchmarks/tabular_read.py [--rows 1000000] [--repeat 3]

Writes a CSV file of `--rows` rows and 20 columns of every kind (12 numeric, 4 of them with
blank cells; 6 categorical of 3 to 5,000 values, 3 with blanks; a text id; the target),
then times, each in a fresh process and imports excluded, the generated project's
`build_datasets` on it (read, schema inferred from the training rows, every row encoded
into the model's tensors, split) and, as the reference, `pandas.read_csv` of the same file
(which only reads). Reports the median seconds, the ratio to pandas and each process's
peak resident memory. Target on this 2-core machine: at most 15 s and 2 GB for a million
rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from copier import run_copy

from generator.questions import template_root

# Run in a fresh process: prints the seconds of the work alone and the peak RSS in MB.
WORKER = """
import resource, sys, time
which, path = sys.argv[1:3]
if which == "pandas":
    import pandas
    start, cpu = time.perf_counter(), time.process_time()
    frame = pandas.read_csv(path)
    shape = frame.shape
else:
    import torch  # imported by every training run before its data
    from bench.plumbing.settings import load_config
    from bench.config import Config
    from bench.data import build_datasets
    cfg = load_config(Config, flags={"data.path": path})
    start, cpu = time.perf_counter(), time.process_time()
    train, val, meta = build_datasets(cfg)
    shape = (len(train) + len(val), len(meta["numeric"]) + len(meta["categorical"]))
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"RESULT {seconds:.3f} {cpu:.3f} {peak:.0f} {shape}")
"""


def write_table(path: Path, rows: int, seed: int = 0) -> None:
    """The benchmark's CSV file: numbers with 4-5 significant digits, as files have them."""
    rng = np.random.default_rng(seed)
    columns: dict[str, pa.Array] = {"id": pa.array([f"row-{i:07d}" for i in range(rows)])}
    for i in range(12):
        values = np.round(rng.normal(size=rows) * 10.0 ** (i % 4), 3)
        blank = rng.random(rows) < 0.05 if i % 3 == 0 else None
        columns[f"num{i}"] = pa.array(values, mask=blank)
    for i, cardinality in enumerate([3, 7, 12, 50, 400, 5000]):
        names = np.array([f"cat{i}-{v}" for v in range(cardinality)])
        values = names[rng.zipf(1.5, size=rows) % cardinality]  # a few frequent, a long tail
        blank = rng.random(rows) < 0.03 if i % 2 else None
        columns[f"cat{i}"] = pa.array(values, mask=blank)
    columns["target"] = pa.array(np.round(rng.normal(size=rows), 4))
    pa_csv.write_csv(pa.table(columns), path)


def measure(command: list[str], env: dict | None = None) -> tuple[float, float, float, str]:
    result = subprocess.run(
        command, env={**os.environ, **(env or {})}, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    _, seconds, cpu, peak, shape = line.split(" ", 4)
    printed = "\n".join(x for x in result.stdout.splitlines() if not x.startswith("RESULT "))
    return float(seconds), float(cpu), float(peak), printed or shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "template"
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
        project = tmp / "bench"
        answers = {"task": "tabular-regression", "framework": "raw", "project_name": "bench"}
        run_copy(str(source), project, data=answers, defaults=True, quiet=True)

        data = tmp / "table.csv"
        start = time.perf_counter()
        write_table(data, args.rows)
        size = data.stat().st_size / 1e6
        print(f"{data.name}: {args.rows:,} rows, 20 columns, {size:.0f} MB", end="")
        print(f" (written in {time.perf_counter() - start:.1f} s)")

        env = {"PYTHONPATH": str(project / "src")}
        runs: dict[str, list[tuple[float, float, float]]] = {"pandas": [], "project": []}
        printed = ""
        load = os.getloadavg()[0]
        for _ in range(args.repeat):  # interleaved, so that both see the same machine load
            for which in runs:
                command = [sys.executable, "-c", WORKER, which, str(data)]
                seconds, cpu, peak, shown = measure(command, env)
                runs[which].append((seconds, cpu, peak))
                printed = shown if which == "project" else printed
        print(f"the project printed:\n  {printed}")
        after = os.getloadavg()[0]
        print(f"load average before: {load:.1f}, after: {after:.1f} ({os.cpu_count()} cores)")
        median = {w: statistics.median(s for s, _, _ in found) for w, found in runs.items()}
        cpu = {w: statistics.median(c for _, c, _ in found) for w, found in runs.items()}
        peak = {w: max(p for _, _, p in found) for w, found in runs.items()}
        print("| what | seconds (median) | CPU seconds | peak RSS MB | seconds / pandas |")
        print("| --- | --- | --- | --- | --- |")
        for which, label in (
            ("pandas", "pandas.read_csv (reads only)"),
            ("project", "build_datasets (read, schema, encode, split)"),
        ):
            ratio = median[which] / median["pandas"]
            print(
                f"| {label} | {median[which]:.2f} | {cpu[which]:.2f} | {peak[which]:.0f} "
                f"| {ratio:.2f} |"
            )
        ok = median["project"] <= 15 and peak["project"] <= 2048
        print(f"target (a million rows): <= 15 s and <= 2048 MB: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
