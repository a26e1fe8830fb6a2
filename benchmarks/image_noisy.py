"""A default image run on a noisy folder: how long it takes, how well it learns, and how
steady its validation accuracy is from one evaluation to the next.

    python benchmarks/image_noisy.py [--framework raw] [--set data.augment=false ...]

The folder (written once into a temporary folder; nothing is downloaded) holds 1,444
images of scikit-learn's scanned digits, each printed onto a patch of one of its two
sample photos (faded halfway to paper), 28 to 160 pixels a side, often not square, in
grayscale, RGB or RGBA, as JPEG (quality 50 to 95) or PNG: the varied sizes, modes and
busy backgrounds of a folder a user brings. scikit-learn comes from .baselines, as
tests/realdata.py finds it.

The run is `train --data FOLDER` with every setting at its default (plus any --set), in a
fresh process. Printed: wall and CPU seconds, the best validation accuracy, and the
steadiness of its curve: the largest change between consecutive evaluations over the whole
run and over its second half, the largest fall, and the spread (max - min) of the last ten
evaluations.
Target: a few minutes at most on 2 CPU cores; no fall of 0.15 between evaluations.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from copier import run_copy
from PIL import Image

from generator.questions import template_root

REPO = Path(__file__).resolve().parent.parent


def noisy_folder(root: Path, count: int = 1444, seed: int = 0) -> Path:
    sys.path.append(str(REPO / ".baselines"))
    from sklearn.datasets import load_digits, load_sample_images

    rng = random.Random(seed)
    digits = load_digits()
    photos = [Image.fromarray(photo) for photo in load_sample_images().images]
    for i in range(count):
        k = rng.randrange(len(digits.target))
        folder = root / str(digits.target[k])
        folder.mkdir(parents=True, exist_ok=True)
        width = rng.randint(28, 160)
        height = rng.choice([width, rng.randint(28, 160)])
        photo = rng.choice(photos)
        patch_w = rng.randint(width // 2, min(photo.width - 1, 4 * width))
        patch_h = rng.randint(height // 2, min(photo.height - 1, 4 * height))
        x, y = rng.randrange(photo.width - patch_w), rng.randrange(photo.height - patch_h)
        background = photo.crop((x, y, x + patch_w, y + patch_h)).resize((width, height))
        paper = Image.new("RGB", (width, height), (235, 230, 220))
        background = Image.blend(background, paper, 0.5)  # busy, yet the digit shows
        side = int(rng.uniform(0.6, 0.95) * min(width, height))
        ink = Image.fromarray((digits.images[k] * 255 / 16).astype(np.uint8))
        ink = ink.resize((side, side), Image.Resampling.BICUBIC)
        light = np.asarray(background.convert("L")).mean() > 128
        colour = tuple(rng.randint(0, 70) if light else rng.randint(185, 255) for _ in range(3))
        place = (rng.randint(0, width - side), rng.randint(0, height - side))
        background.paste(Image.new("RGB", ink.size, colour), place, ink)
        mode = rng.choice(["L", "RGB", "RGBA"])
        image = background.convert(mode)
        if mode != "RGBA" and rng.random() < 0.6:
            image.save(folder / f"{i}.jpg", quality=rng.randint(50, 95))
        else:
            image.save(folder / f"{i}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="raw", choices=["raw", "lightning"])
    parser.add_argument("--set", action="append", default=[], dest="settings")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "template"
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
        project = tmp / "project"
        answers = {"task": "image-classification", "framework": args.framework}
        run_copy(
            str(source),
            project,
            data={**answers, "project_name": "bench"},
            defaults=True,
            quiet=True,
        )
        folder = noisy_folder(tmp / "digits")
        command = [sys.executable, "-m", "bench", "train", "--data", str(folder)]
        command += ["--accelerator", "cpu", "--output-dir", str(tmp / "runs"), "--name", "n"]
        command += args.settings  # SECTION.KEY=VALUE overrides
        started, before = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
        result = subprocess.run(
            command,
            cwd=project,
            env={**os.environ, "PYTHONPATH": str(project / "src")},
            capture_output=True,
            text=True,
        )
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if result.returncode != 0:
            raise SystemExit(result.stderr[-3000:])
        wall, cpu = time.time() - started, after.ru_utime - before.ru_utime
        with (tmp / "runs" / "n" / "metrics.csv").open(newline="") as file:
            rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]
        accuracy = [row["val/acc"] for row in rows]
        changes = [b - a for a, b in zip(accuracy, accuracy[1:], strict=False)]
        jumps = [abs(change) for change in changes]
        late = jumps[len(jumps) // 2 :]
        best = max(rows, key=lambda row: row["val/acc"])
        spread = max(accuracy[-10:]) - min(accuracy[-10:])
        print(result.stdout.splitlines()[0])
        print(f"{result.stdout.strip().splitlines()[-3]}")
        print(
            f"{wall:.0f} s ({cpu:.0f} s of CPU), {len(rows)} evaluations to step "
            f"{rows[-1]['step']:.0f}; best val/acc {best['val/acc']:.3f} at step "
            f"{best['step']:.0f}; largest change between evaluations {max(jumps):.3f} "
            f"(second half {max(late):.3f}), largest fall {-min(changes):.3f}; the last ten "
            f"within {spread:.3f}"
        )
        print("val/acc: " + " ".join(f"{value:.2f}" for value in accuracy))


if __name__ == "__main__":
    main()
