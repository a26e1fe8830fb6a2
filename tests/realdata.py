"""Small real datasets in each task's format, and the classical baseline each must match.

Nothing here is generated noise: the images are scikit-learn's bundled handwritten digits
(saved at varied sizes, in varied modes and formats), the table its diabetes study, the
texts the standard library's own docstrings (labelled by their package), and the language
model's text 4 MB of the standard library's own source.
The tables with categories and blank cells are those plotnine and vega_datasets ship (the
diamonds of ggplot2, the cars of the Vega datasets), read from their files without importing
the packages. Every machine set up as .ci/run does has them; nothing is downloaded.

Each builder writes the data in the format DESIGN.md gives for the task, and returns the
--data path and a function that scores the classical baseline on the project's own split.
"""

from __future__ import annotations

import csv
import importlib.util
import inspect
import json
import math
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np

# scikit-learn lives outside the environment the generated projects see (.ci/run installs it
# with --target .baselines): beside them, its scipy would be imported by every project's
# torchmetrics, a second more per process. Appended, so that numpy stays the environment's.
sys.path.append(str(Path(__file__).resolve().parent.parent / ".baselines"))

SEED = 42  # the generated projects' default seed, which decides their split
VAL_SPLIT = 0.2  # their default validation share (the language model holds out 0.1)


def project_split(n: int, val_split: float = VAL_SPLIT, seed: int = SEED):
    """The rows a generated project holds out, as its data.py (split_indices) picks them:
    the last floor(n * val_split) of a seeded permutation (one at least, never all)."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(n - 1, max(1, math.floor(n * val_split)))
    return order[: n - n_val], order[n - n_val :]


# --- image classification: handwritten digits ----------------------------------------------


def digits_folder(root: Path) -> Path:
    """root/<digit>/<i>.png|jpg: scikit-learn's 1797 scanned digits (8x8 pixels) as images of
    the sizes, modes and formats users bring: enlarged to 16 to 64 pixels a side (not always
    square), dark ink on light paper, in grayscale, RGB (tinted ink and paper) or RGBA,
    saved as PNG or as JPEG of quality 60 to 95. The project splits the folder itself."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(0)
    for i, (pixels, digit) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        ink = (pixels / 16)[..., None]  # 0: paper, 1: ink
        mode = rng.choice(["L", "RGB", "RGBA"])
        if mode == "L":
            paper, colour = [rng.randint(200, 255)], [rng.randint(0, 60)]
        else:
            paper = [rng.randint(180, 255) for _ in range(3)]
            colour = [rng.randint(0, 90) for _ in range(3)]
        rgb = (np.array(paper) * (1 - ink) + np.array(colour) * ink).astype(np.uint8)
        image = Image.fromarray(rgb.squeeze(-1) if mode == "L" else rgb)
        if mode == "RGBA":
            image.putalpha(255)
        side = rng.randint(16, 64)
        size = (side, side) if rng.random() < 0.5 else (side, rng.randint(16, 64))
        image = image.resize(size, rng.choice([Image.Resampling.NEAREST, Image.Resampling.BICUBIC]))
        if mode != "RGBA" and rng.random() < 0.5:
            image.save(folder / f"{i}.jpg", quality=rng.randint(60, 95))
        else:
            image.save(folder / f"{i}.png")
    return root


def digits_baseline(root: Path) -> float:
    """Validation accuracy, on the project's split, of a logistic regression on the digits'
    original 8x8 pixels: what a classical model makes of the clean scans."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    # The project's order: classes sorted, then the files of each sorted by name.
    order = [
        int(path.stem)
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        for path in sorted(folder.iterdir())
    ]
    train, val = project_split(len(order))
    x, y = digits.data / 16, digits.target
    train, val = [order[i] for i in train], [order[i] for i in val]
    model = LogisticRegression(max_iter=2000).fit(x[train], y[train])
    return float(model.score(x[val], y[val]))


# --- text classification: the standard library's docstrings --------------------------------

PACKAGES = ["asyncio", "email", "http", "importlib", "logging", "multiprocessing", "xml"]


def docstrings(per_package: int = 60) -> list[tuple[str, str]]:
    """(first paragraph of a docstring, its package) for public functions and classes."""
    import importlib
    import pkgutil

    rows = []
    for package in PACKAGES:
        module = importlib.import_module(package)
        names = [package]
        if hasattr(module, "__path__"):
            names += sorted(
                info.name
                for info in pkgutil.walk_packages(module.__path__, package + ".")
                if "test" not in info.name and "__main__" not in info.name
            )
        seen, texts = set(), []
        for name in names:
            try:
                module = importlib.import_module(name)
            except Exception:  # a platform-specific module
                continue
            for _, obj in sorted(vars(module).items()):
                if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                    continue
                if getattr(obj, "__module__", "").split(".")[0] != package or obj in seen:
                    continue
                seen.add(obj)
                doc = (inspect.getdoc(obj) or "").split("\n\n")[0].replace("\n", " ").strip()
                if len(doc.split()) >= 6:
                    texts.append(doc)
        random.Random(package).shuffle(texts)
        rows += [(text, package) for text in texts[:per_package]]
    random.Random(0).shuffle(rows)
    return rows


def docstrings_csv(path: Path) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(docstrings())
    return path


def docstrings_baseline(path: Path) -> float:
    """Validation accuracy of a logistic regression on TF-IDF features, on the project's split."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    with path.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    train, val = project_split(len(rows))
    vectorizer = TfidfVectorizer(token_pattern=r"[\w']+", sublinear_tf=True)
    x_train = vectorizer.fit_transform([rows[i]["text"] for i in train])
    x_val = vectorizer.transform([rows[i]["text"] for i in val])
    model = LogisticRegression(max_iter=2000, C=10).fit(x_train, [rows[i]["label"] for i in train])
    return float(model.score(x_val, [rows[i]["label"] for i in val]))


# --- tabular regression: the diabetes study -------------------------------------------------


def diabetes_csv(path: Path) -> Path:
    """The 442 patients of scikit-learn's diabetes study, in the units it ships them."""
    from sklearn.datasets import load_diabetes

    data = load_diabetes()
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*data.feature_names, "target"])
        for features, target in zip(data.data, data.target, strict=True):
            writer.writerow([f"{value:.6g}" for value in features] + [f"{target:g}"])
    return path


def diabetes_baseline(path: Path) -> float:
    """Validation R2 of a linear regression, on the project's split."""
    from sklearn.linear_model import LinearRegression

    table = np.loadtxt(path, delimiter=",", skiprows=1)
    train, val = project_split(len(table))
    x, y = table[:, :-1], table[:, -1]
    return float(LinearRegression().fit(x[train], y[train]).score(x[val], y[val]))


# --- tabular regression with categories and blank cells: tables other packages ship ---------


def shipped(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package (both
    import plotting libraries that the tests do not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise RuntimeError(
            f"{package} is not installed: run .ci/run's pip install --target .baselines"
        )
    return Path(spec.submodule_search_locations[0], *parts)


def diamonds_csv(path: Path, rows: int = 3000) -> Path:
    """3,000 of ggplot2's 53,940 diamonds (plotnine's diamonds.csv), drawn with a fixed seed
    and kept in the file's order: the price from carat, cut, color, clarity (categories),
    depth, table and the sizes x, y, z."""
    with shipped("plotnine", "data", "diamonds.csv").open(newline="") as file:
        reader = csv.reader(file)
        header, lines = next(reader), list(reader)
    keep = sorted(random.Random(0).sample(range(len(lines)), rows))
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(lines[i] for i in keep)
    return path


def cars_csv(path: Path) -> Path:
    """The 406 cars of the Vega datasets (vega_datasets ships them as JSON): miles per gallon
    from cylinders, displacement, horsepower (blank for 6 cars), weight, acceleration, model
    year (a date) and origin (categories), beside each car's name; 8 have no miles per
    gallon. Blank cells where the JSON has null."""
    cars = json.loads(shipped("vega_datasets", "_data", "cars.json").read_text())
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(list(cars[0]))
        writer.writerows(["" if value is None else value for value in car.values()] for car in cars)
    return path


def boosted_trees_r2(path: Path, target: str, numeric: list[str], categorical: list[str]) -> float:
    """Validation R2 of scikit-learn's HistGradientBoostingRegressor, with its native support
    of categories and blanks, on the project's split of the rows that have a target and on
    the project's input columns (the run's schema)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row[target] != ""]
    columns = [[float(row[name] or "nan") for row in rows] for name in numeric]
    for name in categorical:  # each category as a code, a blank as missing
        codes = {value: i for i, value in enumerate(sorted({row[name] for row in rows} - {""}))}
        columns.append([codes.get(row[name], math.nan) for row in rows])
    x, y = np.array(columns).T, np.array([float(row[target]) for row in rows])
    train, val = project_split(len(rows))
    trees = HistGradientBoostingRegressor(
        categorical_features=list(range(len(numeric), len(columns))), random_state=0
    )
    return float(trees.fit(x[train], y[train]).score(x[val], y[val]))


# Name, writer and target of each table; the baseline takes the columns the run used.
TABLES = {
    "diamonds": ("diamonds.csv", diamonds_csv, "price"),
    "cars": ("cars.csv", cars_csv, "Miles_per_Gallon"),
}


# --- language modeling: the standard library's own source -----------------------------------

# Left out: tests (their data files and fixtures), the codec tables of encodings/ (pages of
# generated numbers) and what pip installs.
SKIPPED = {"test", "tests", "idle_test", "encodings", "site-packages", "__pycache__"}


def stdlib_text(path: Path, size: int = 4_000_000) -> Path:
    """The first `size` bytes of the standard library's Python source, its modules in a
    seeded random order (so that the held-out end is a mix of them, not one package)."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        file
        for file in stdlib.rglob("*.py")
        if not SKIPPED & set(file.relative_to(stdlib).parts[:-1])
    )
    random.Random(0).shuffle(files)
    data = bytearray()
    for file in files:
        data += file.read_bytes()
        if len(data) > size:
            break
    data = bytes(data).decode("utf-8", errors="replace").encode("utf-8")  # a few are Latin-1
    while data[size] & 0xC0 == 0x80:  # end on a whole character
        size -= 1
    path.write_bytes(data[:size])
    return path


def bigram_bits_per_byte(path: Path, val_split: float = 0.1) -> float:
    """Validation bits per byte of a character bigram model fitted on the rest of the text,
    with add-k smoothing (k = 0.1, not tuned), on the project's split: the last val_split of
    the bytes, from the first whole character."""
    data = path.read_bytes()
    cut = len(data) - math.floor(len(data) * val_split)
    while data[cut] & 0xC0 == 0x80:
        cut += 1
    train, val = data[:cut].decode("utf-8"), data[cut:].decode("utf-8")
    vocab = set(train) | set(val)
    pairs, firsts = Counter(zip(train, train[1:], strict=False)), Counter(train[:-1])
    k = 0.1
    nats = 0.0
    for a, b in zip(val, val[1:], strict=False):
        nats -= math.log((pairs[a, b] + k) / (firsts[a] + k * len(vocab)))
    return nats / math.log(2) / len(val[1:].encode("utf-8"))


DATASETS = {
    "image-classification": ("digits", digits_folder, digits_baseline),
    "text-classification": ("docstrings.csv", docstrings_csv, docstrings_baseline),
    "tabular-regression": ("diabetes.csv", diabetes_csv, diabetes_baseline),
    "language-modeling": ("stdlib.txt", stdlib_text, bigram_bits_per_byte),
}
