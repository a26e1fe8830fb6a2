"""Whether image decoding keeps up with training: a folder of JPEG photos through the
image-classification project's loader, against a bare Pillow loop over the same files.

    python benchmarks/image_decode.py [--count 20000] [--workers 2] [--size 500x375]

The folder is written once into a temporary folder: --count JPEGs (quality 90) of --size
pixels, crops of scikit-learn's two sample photos (from .baselines, as tests/realdata.py
finds them; a Pillow-drawn pattern where scikit-learn is missing), in ten class folders.
Then, over the same files:

- reference: a bare Pillow loop in this process, `Image.open(path).convert("RGB")`;
- the project: `build_datasets` (which opens every header, and picks data.image_size from
  the images' sizes), then one epoch of its training loader with --workers loader
  processes: the images are decoded (a JPEG at a fraction of its size, Image.draft) and
  resized, in batches of train.batch_size.

Target: the project's loader feeds at least as many images a second as the bare loop.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from copier import run_copy
from PIL import Image

from generator.questions import template_root

REPO = Path(__file__).resolve().parent.parent


def photos() -> list[Image.Image]:
    """scikit-learn's sample photos (a temple, a flower), or a drawn pattern without it."""
    sys.path.append(str(REPO / ".baselines"))
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return [Image.effect_mandelbrot((640, 480), (-2, -1.2, 1, 1.2), 100).convert("RGB")]
    return [Image.fromarray(image) for image in load_sample_images().images]


def write_folder(root: Path, count: int, size: tuple[int, int]) -> list[Path]:
    rng = random.Random(0)
    sources = photos()
    paths = []
    for i in range(count):
        photo = rng.choice(sources)
        width, height = rng.randint(size[0] // 2, photo.width), rng.randint(
            size[1] // 2, photo.height
        )
        x, y = rng.randint(0, photo.width - width), rng.randint(0, photo.height - height)
        folder = root / f"class-{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:05d}.jpg"
        photo.crop((x, y, x + width, y + height)).resize(size).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", default="500x375")
    args = parser.parse_args()
    size = tuple(int(side) for side in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        source = tmp / "template"
        source.mkdir()
        shutil.copy(template_root() / "copier.yml", source)
        shutil.copytree(template_root() / "template", source / "template")
        project = tmp / "project"
        answers = {"task": "image-classification", "framework": "raw", "project_name": "bench"}
        run_copy(str(source), project, data=answers, defaults=True, quiet=True)
        sys.path.insert(0, str(project / "src"))
        from bench.config import Config
        from bench.data import build_datasets
        from bench.plumbing.settings import load_config
        from bench.plumbing.training import make_loader

        started = time.perf_counter()
        paths = write_folder(tmp / "photos", args.count, size)
        print(f"wrote {len(paths):,} JPEGs of {args.size} in {time.perf_counter() - started:.0f} s")

        started = time.perf_counter()
        for path in paths:
            with Image.open(path) as image:
                image.convert("RGB")
        bare = len(paths) / (time.perf_counter() - started)
        print(f"reference, a bare Pillow loop: {bare:.0f} images/s")

        started = time.perf_counter()
        overrides = {"data.path": str(tmp / "photos"), "train.num_workers": args.workers}
        cfg = load_config(Config, flags=overrides)
        train, _, meta = build_datasets(cfg)
        setup = time.perf_counter() - started
        t = cfg.train
        loader = make_loader(train, t.batch_size, t.seed, True, num_workers=t.num_workers)
        started = time.perf_counter()
        images = sum(len(labels) for _, labels in loader)
        fed = images / (time.perf_counter() - started)
        print(
            f"the project, {args.workers} loader processes, {meta['image_size']} pixels: "
            f"{fed:.0f} images/s over one epoch of {images:,} ({fed / bare:.2f} x the bare "
            f"loop; target >= 1), after {setup:.1f} s reading the headers"
        )


if __name__ == "__main__":
    main()
