"""Small datasets in each task's real-data format (DESIGN.md), written by the tests.

Each is learnable, so that a test can assert that a model trained on it really learned.
"""

from __future__ import annotations

import csv
import inspect
import random
from pathlib import Path


def image_folder(root: Path, per_class: int = 100, seed: int = 0) -> Path:
    """root/circle/*.png and root/square/*.jpg: shapes of several sizes and colours."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    for name in ("circle", "square"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = rng.choice([24, 32, 40])
            image = Image.new("RGB", (size, size), (rng.randrange(60), 40, rng.randrange(60)))
            r = rng.uniform(size / 5, size / 3)
            x, y = rng.uniform(r, size - r), rng.uniform(r, size - r)
            colour = (200 + rng.randrange(55), rng.randrange(256), 120)
            draw = ImageDraw.Draw(image)
            shape = draw.ellipse if name == "circle" else draw.rectangle
            shape([x - r, y - r, x + r, y + r], fill=colour)
            image.save(root / name / f"{i}.{'png' if name == 'circle' else 'jpg'}")
    return root


def text_csv(path: Path, rows: int = 400, seed: int = 0) -> Path:
    """text,label rows: reviews whose words say positive or negative (with commas, quotes)."""
    rng = random.Random(seed)
    words = {
        "positive": ["great", "wonderful", "loved", "superb", "brilliant", "moving"],
        "negative": ["awful", "boring", "hated", "dull", "terrible", "clumsy"],
    }
    filler = ["the", "film", "was", "really", "plot", "acting", "and", "a", "bit", '"so"']
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "text", "label"])
        for i in range(rows):
            label = rng.choice(list(words))
            picked = rng.sample(words[label], 2) + rng.sample(filler, 5)
            rng.shuffle(picked)
            writer.writerow([i, ", ".join(picked), label])
    return path


def table_csv(path: Path, rows: int = 600, seed: int = 0) -> Path:
    """Columns of every kind: an id, numbers a, b and c (c blank on a twentieth of the rows),
    a district, and the target `price` = 3a - 2b + c**2 + the district's share + noise,
    blank on one row in a hundred (such rows are skipped)."""
    rng = random.Random(seed)
    districts = {"north": -1.5, "south": 0.0, "east": 1.0, "west": 2.0}
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", "a", "b", "c", "district", "price"])
        for i in range(rows):
            a, b, c = (rng.gauss(0, 1) for _ in range(3))
            district = rng.choice(list(districts))
            price = 3 * a - 2 * b + c * c + districts[district] + rng.gauss(0, 0.1)
            writer.writerow(
                [
                    f"house-{seed}-{i}",
                    f"{a:.4f}",
                    f"{b:.4f}",
                    "" if rng.random() < 0.05 else f"{c:.4f}",
                    district,
                    "" if i % 100 == 7 else f"{price:.4f}",
                ]
            )
    return path


def text_file(path: Path, lines: int = 1200, seed: int = 0) -> Path:
    """A UTF-8 text of counting rhymes, with non-ASCII letters."""
    rng = random.Random(seed)
    numbers = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    endings = ["little ducks", "grüne Äpfel", "red ships", "café chairs"]
    text = []
    for _ in range(lines):
        start = rng.randrange(7)
        text.append(f"{' '.join(numbers[start:start + 3])} {rng.choice(endings)}.")
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


WRITERS = {  # file name, writer, its size argument
    "image-classification": ("images", image_folder, "per_class"),
    "text-classification": ("reviews.csv", text_csv, "rows"),
    "tabular-regression": ("houses.csv", table_csv, "rows"),
    "language-modeling": ("rhymes.txt", text_file, "lines"),
}


def write_user_data(task: str, folder: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """The task's dataset, written under folder; returns the path to give to --data.

    Another seed gives other samples of the same kind (a held-out set), `scale` a share of
    the usual size."""
    name, writer, size = WRITERS[task]
    folder.mkdir(parents=True, exist_ok=True)
    usual = inspect.signature(writer).parameters[size].default
    return writer(folder / name, **{size: max(1, round(usual * scale))}, seed=seed)
