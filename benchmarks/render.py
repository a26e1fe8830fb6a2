"""Render time per generated project, in-process after import, against copying the template.

    python benchmarks/render.py [--repeat 3]

Renders all 32 combinations (Copier's Python API, the template outside git so nothing is
cloned) and prints the median time per project. The reference is a plain copy of the same
template folder in the same run, so the ratio says what Jinja and Copier cost beyond I/O.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from copier import run_copy

from generator.questions import MATRIX_AXES, matrix, template_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp, "template")
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
        run_copy(str(source), Path(tmp, "warm-up"), defaults=True, quiet=True)

        renders, copies = [], []
        for repeat in range(args.repeat):
            for combination in matrix():
                name = "-".join(combination[axis] for axis in MATRIX_AXES) + f"-{repeat}"
                start = time.perf_counter()
                run_copy(str(source), Path(tmp, name), data=combination, defaults=True, quiet=True)
                renders.append(time.perf_counter() - start)
                start = time.perf_counter()
                shutil.copytree(source / "template", Path(tmp, "copy-" + name))
                copies.append(time.perf_counter() - start)
    render, copy = statistics.median(renders), statistics.median(copies)
    print(f"projects rendered: {len(renders)} ({len(matrix())} combinations x {args.repeat})")
    print(f"median render time per project: {render * 1000:.1f} ms")
    print(f"median copy of the template folder (reference): {copy * 1000:.1f} ms")
    print(f"ratio render / copy: {render / copy:.1f}")


if __name__ == "__main__":
    main()
