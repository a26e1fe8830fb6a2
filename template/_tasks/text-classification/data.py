{% block docstring %}
"""Data for text classification: built-in sentences, or your CSV file with columns text,label.

Your data: a CSV file with a header and (at least) the columns `text` and `label`; labels
may be any strings. Texts are lower-cased and split into words; the vocabulary is the most
frequent words of the training split, saved with the checkpoint.
"""
{% endblock %}

from __future__ import annotations

{% block imports %}
import csv
import logging
import math
import re
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from .config import Config

PAD, UNK = "<pad>", "<unk>"
{% endblock %}
log = logging.getLogger(__name__)

TOPICS = {
    "sports": "match team goal coach player season league score win stadium",
    "food": "recipe dinner bread cheese soup spicy bake lunch kitchen sauce",
    "tech": "software laptop chip code phone robot network app battery cloud",
    "weather": "rain storm sunny wind forecast snow cloudy cold humid thunder",
}
FILLER = "the a of and to in is it that was for on with as this at by from today really very"


class DataError(Exception):
    """Missing, empty or malformed data; the message names the file and the fix."""


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
{% block build_datasets_docstring %}
    """Training and validation sets, and the metadata the model needs (vocabulary, labels).

    The vocabulary comes from the training split alone; a checkpoint's `meta` is reused.
    """
{% endblock %}
    if cfg.data.path is None:
        texts, labels = make_sentences(2000, cfg.train.seed)
    else:
        texts, labels = read_csv(Path(cfg.data.path))
    train_rows, val_rows = split_indices(len(texts), cfg, labels)
    if meta is None:
        names = sorted(set(labels))
        if len(names) < 2:
            raise DataError(
                f"{cfg.data.path}: every row has the label {names[0]!r}; a classifier needs "
                "at least two labels to tell apart"
            )
        log.info(
            f"{cfg.data.path or 'the built-in sentences'}: {len(texts):,} texts of "
            f"{len(names)} labels, {len(val_rows):,} of them held out for validation"
        )
        counts = Counter(labels[i] for i in train_rows)
{% block meta %}
        vocab, idf = build_vocab([texts[i] for i in train_rows], cfg.data.max_vocab)
        meta = {
            "vocab": vocab,
            "idf": idf,
            "labels": names,
            "max_length": cfg.data.max_length,
            "class_counts": [counts[name] for name in names],  # in the training split
        }
{% endblock %}
    train = encode_rows([texts[i] for i in train_rows], [labels[i] for i in train_rows], meta)
    val = encode_rows([texts[i] for i in val_rows], [labels[i] for i in val_rows], meta)
    return train, val, meta


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """Every row of a CSV file, for `evaluate --data`."""
    return encode_rows(*read_csv(Path(path)), meta)


def read_csv(path: Path) -> tuple[list[str], list[str]]:
    """The text and label columns of a CSV file, with a clear error for anything else."""
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        if path.exists() and not path.is_dir():  # a named pipe, a device...
            problem = "is not a regular file (a named pipe, a device...)"
        raise DataError(f"{path} {problem}; text-classification expects a CSV file")
    rows, line = [], 0  # line: where the last row read ended
    try:
        # utf-8-sig: a byte-order mark (Excel writes one) is not part of the first column's name.
        with path.open(newline="", encoding="utf-8-sig") as file:
            # strict: a double quote that is never closed is an error, not a text that
            # swallows every line after it.
            reader = csv.DictReader(file, strict=True)
            columns = reader.fieldnames or []
            line = reader.line_num
            if "text" not in columns or "label" not in columns:
                raise DataError(
                    f"{path}: expected a CSV with columns text,label; "
                    f"got columns {','.join(columns) or '(none)'}"
                )
            for row in reader:
                line = reader.line_num
                if None in row:  # more fields than the header: a text with an unquoted comma
                    raise DataError(
                        f"{path}: line {reader.line_num} has more fields than the header "
                        f"({','.join(columns)}); put texts that contain commas in double quotes"
                    )
                rows.append((row["text"] or "", row["label"]))
    except csv.Error as error:  # a quote left open: the row from the line after the last
        raise DataError(
            f"{path}: the row from line {line + 1} is not valid CSV ({error}); a text in "
            'double quotes must end with one, and a quote inside it is written twice ("")'
        ) from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not a readable UTF-8 CSV file ({error})") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    if len(rows) < 2:
        raise DataError(f"{path} has {len(rows)} rows; at least two are needed")
    missing = [i + 2 for i, (_, label) in enumerate(rows) if not label]
    if missing:
        raise DataError(f"{path}: line {missing[0]} has no label; every row needs one")
    return [text for text, _ in rows], [label for _, label in rows]


{% block encoding %}
def tokenize(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def build_vocab(texts: list[str], max_vocab: int) -> tuple[list[str], list[float]]:
    """The most frequent words, after the padding and unknown-word tokens, and each word's
    inverse document frequency: log((1 + texts) / (1 + texts with the word)) + 1, as
    scikit-learn's TfidfVectorizer computes it. Padding weighs 0, unknown words 1."""
    counts = Counter(word for text in texts for word in tokenize(text))
    documents = Counter(word for text in texts for word in set(tokenize(text)))
    words = [word for word, _ in counts.most_common(max_vocab - 2)]
    idf = [math.log((1 + len(texts)) / (1 + documents[word])) + 1 for word in words]
    return [PAD, UNK, *words], [0.0, 1.0, *idf]


def encode(texts: list[str], meta: dict) -> torch.Tensor:
    """Token ids, (len(texts), max_length), padded with 0."""
    index = {word: i for i, word in enumerate(meta["vocab"])}
    length = meta["max_length"]
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    for row, text in enumerate(texts):
        tokens = [index.get(word, 1) for word in tokenize(text)[:length]]
        ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
    return ids
{% endblock %}


def encode_rows(texts: list[str], labels: list[str], meta: dict) -> TensorDataset:
    label_index = {label: i for i, label in enumerate(meta["labels"])}
    unknown = sorted(set(labels) - set(label_index))
    if unknown:
        raise DataError(f"labels {unknown} are not among the trained ones {meta['labels']}")
    targets = torch.tensor([label_index[label] for label in labels], dtype=torch.long)
    return TensorDataset(encode(texts, meta), targets)


{% include "template/_shared/split.py" %}


def make_sentences(n: int, seed: int) -> tuple[list[str], list[str]]:
    """n short sentences: filler, two words of a topic (the label) and one of another."""
    g = torch.Generator().manual_seed(seed)
    topics = list(TOPICS)
    filler = FILLER.split()
    texts, labels = [], []
    for _ in range(n):
        topic, other = (topics[i] for i in torch.randperm(len(topics), generator=g)[:2])
        words, distractors = TOPICS[topic].split(), TOPICS[other].split()
        picked = [words[i] for i in torch.randint(len(words), (2,), generator=g)]
        picked.append(distractors[torch.randint(len(distractors), (1,), generator=g).item()])
        picked += [filler[i] for i in torch.randint(len(filler), (6,), generator=g)]
        order = torch.randperm(len(picked), generator=g)
        texts.append(" ".join(picked[i] for i in order))
        labels.append(topic)
    return texts, labels


# --- predict and export --------------------------------------------------------------


def predict(model: torch.nn.Module, inputs: list[str], meta: dict) -> list[dict]:
    """The most likely label of each text, with its probability: a row per text (with the
    other columns of a CSV's row). An input is a text; or, when it names a file, a CSV file
    with a `text` column, or a text file of one text a line."""
    rows = [row for given in inputs for row in texts_of(given)]
    for start in range(0, len(rows), 1024):  # a file of any size, in batches
        batch = rows[start : start + 1024]
        with torch.no_grad():
            top = model(encode([row["text"] for row in batch], meta)).softmax(dim=-1).max(-1)
        for row, label, p in zip(batch, top.indices.tolist(), top.values.tolist(), strict=True):
            row.update(predicted=meta["labels"][label], probability=round(p, 4))
    return rows


def texts_of(given: str) -> list[dict[str, str]]:
    """A text as typed, or the texts of the file it names: the rows of a CSV file (which
    need a `text` column), else each non-blank line."""
    path = Path(given)
    if path.is_dir():
        raise DataError(
            f"{path} is a folder; predict takes texts, CSV files with a text column, or text "
            "files of one text a line"
        )
    if not path.is_file():
        return [{"text": given}]
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            if path.suffix.lower() != ".csv":
                return [{"text": line.strip()} for line in file if line.strip()]
            reader = csv.DictReader(file)
            if "text" not in (reader.fieldnames or []):
                raise DataError(
                    f"{path}: expected a CSV with a text column; got columns "
                    f"{','.join(reader.fieldnames or []) or '(none)'}"
                )
            return [{key: value or "" for key, value in row.items() if key} for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path} is not a readable UTF-8 text or CSV file ({error})") from None


{% block example_inputs %}
def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    tokens = torch.randint(len(meta["vocab"]), (2, meta["max_length"]))
    return (tokens,), {"tokens": {0: batch}}
{% endblock %}
