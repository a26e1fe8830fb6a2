"""Training time of each task, plain PyTorch against Lightning, on the built-in data (CPU).

    python benchmarks/train.py [--repeat 2]

For each task and framework: generate the cpu project, install it in a light venv, then
time `train` through its console script, and report its final validation metric. The
reference in the same run is `python -c "import torch"`: a ratio over it says how much a
run costs beyond starting Python with torch. Figures are medians over --repeat runs.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import install, read_metrics, render  # noqa: E402

from generator.questions import template_root  # noqa: E402

METRIC = {
    "image-classification": "val/acc",
    "text-classification": "val/acc",
    "tabular-regression": "val/r2",
    "language-modeling": "val/loss",
}


def timed(command: list[str], cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    reference = statistics.median(
        timed([sys.executable, "-c", "import torch"]) for _ in range(args.repeat)
    )
    print(f"reference, python -c 'import torch': {reference:.2f} s\n")
    print(f"{'task':<22}{'framework':<11}{'train s':>8}{'x ref':>7}  final metric")
    with tempfile.TemporaryDirectory() as tmp:
        # A copy outside git: Copier renders it as it is, without cloning.
        source = Path(tmp, "template")
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
        for task in METRIC:
            seconds = {}
            for framework in ("raw", "lightning"):
                folder = Path(tmp, task, framework)
                project = render(source, folder / "project", task=task, framework=framework)
                installed = install(project, folder / "venv")
                times = []
                for i in range(args.repeat):
                    runs = folder / "runs"
                    cmd = [str(installed.script), "train", "--output-dir", str(runs)]
                    times.append(timed(cmd + ["--name", str(i)], cwd=project))
                seconds[framework] = statistics.median(times)
                final = read_metrics(folder / "runs" / "0")[-1][METRIC[task]]
                print(
                    f"{task:<22}{framework:<11}{seconds[framework]:>8.1f}"
                    f"{seconds[framework] / reference:>7.1f}  {METRIC[task]} {final:.4f}"
                )
            print(f"{'':<22}{'lightning / raw':<19}{seconds['lightning'] / seconds['raw']:>7.2f}")


if __name__ == "__main__":
    main()
