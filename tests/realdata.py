"""Small real datasets in each task's format, and the classical baseline each must match.

Nothing here is generated noise: the images are scikit-learn's bundled handwritten digits,
the table its diabetes study, the texts the standard library's own docstrings (labelled
by their package), and the language model's text the Python documentation's help topics.
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
    """The rows a generated project holds out, as its data.py picks them (a seeded shuffle)."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, math.floor(n * val_split))
    return order[n_val:], order[:n_val]


# --- image classification: handwritten digits ----------------------------------------------


def digits_folder(root: Path) -> Path:
    """root/train/<digit>/*.png and root/val/<digit>/*.png: the 8x8 digits, split 80/20."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = random.Random(0)
    order = list(range(len(digits.target)))
    rng.shuffle(order)
    n_val = len(order) // 5
    for split, rows in (("val", order[:n_val]), ("train", order[n_val:])):
        for i in rows:
            folder = root / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def digits_baseline(root: Path) -> float:
    """Validation accuracy of a logistic regression on the raw pixels."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression

    def load(split):
        x, y = [], []
        for path in sorted((root / split).glob("*/*.png")):
            x.append(np.asarray(Image.open(path), dtype=np.float32).ravel() / 255)
            y.append(int(path.parent.name))
        return np.array(x), np.array(y)

    (x_train, y_train), (x_val, y_val) = load("train"), load("val")
    model = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return float(model.score(x_val, y_val))


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


# --- language modeling: the Python documentation's help topics -----------------------------


def help_topics_text(path: Path, size: int = 40_000) -> Path:
    """The first `size` characters of the Python documentation's help topics."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name].strip() for name in sorted(topics))
    path.write_text(text[:size], encoding="utf-8")
    return path


def bigram_loss(path: Path, val_split: float = 0.1) -> float:
    """Validation cross-entropy (nats per character) of a character bigram model fitted on
    the rest of the text, with add-k smoothing tuned... not at all: k = 0.1."""
    text = path.read_text(encoding="utf-8")
    n_val = math.floor(len(text) * val_split)
    train, val = text[:-n_val], text[-n_val:]
    vocab = sorted(set(text))
    pairs, firsts = Counter(zip(train, train[1:], strict=False)), Counter(train[:-1])
    k = 0.1
    total = 0.0
    for a, b in zip(val, val[1:], strict=False):
        total -= math.log((pairs[a, b] + k) / (firsts[a] + k * len(vocab)))
    return total / (len(val) - 1)


DATASETS = {
    "image-classification": ("digits", digits_folder, digits_baseline),
    "text-classification": ("docstrings.csv", docstrings_csv, docstrings_baseline),
    "tabular-regression": ("diabetes.csv", diabetes_csv, diabetes_baseline),
    "language-modeling": ("help-topics.txt", help_topics_text, bigram_loss),
}
