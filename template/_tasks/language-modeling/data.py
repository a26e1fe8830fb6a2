"""Data for character-level language modelling: built-in text, or your UTF-8 text file.

Your data: one UTF-8 text file. Every distinct character is a token; the vocabulary is
saved with the checkpoint. The end of the text (val_split of it) is held out for
validation, so no validation window overlaps a training one.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from .config import Config
from .plumbing import UserError
from .plumbing.splits import split_indices

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
VERBS = ["sees", "likes", "finds", "chases", "watches", "draws"]
OBJECTS = ["the ball", "a red apple", "the garden", "a big house", "the river", "some bread"]
ENDINGS = [".", " today.", " at night.", " again.", " in the rain."]


class DataError(UserError):
    """Missing, empty or unreadable data; the message names the file and the fix."""


class CharWindows(Dataset):
    """Windows of block_size characters (inputs) and the same shifted by one (targets)."""

    def __init__(self, ids: torch.Tensor, block_size: int, stride: int):
        self.ids, self.block_size = ids, block_size
        self.starts = range(0, len(ids) - block_size, stride)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.starts[index]
        chunk = self.ids[start : start + self.block_size + 1]
        return chunk[:-1], chunk[1:]


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
    """Training and validation windows, and the metadata the model needs (the characters).

    A checkpoint's `meta` is reused, so a resumed run keeps its vocabulary.
    """
    text = make_text(cfg.train.seed) if cfg.data.path is None else read_text(Path(cfg.data.path))
    new = meta is None
    if new:
        meta = {"chars": "".join(sorted(set(text))), "block_size": cfg.data.block_size}
    block = meta["block_size"]
    ids = encode(text, meta)
    # The validation text is one stretch: the end, or the fold's block of the text. Training
    # windows come from the text before and after it, never across it.
    _, held_out = split_indices(len(ids), cfg, shuffle=False, val_last=True, min_val=block + 1)
    start, end = held_out[0].item(), held_out[-1].item() + 1
    before, after = ids[:start], ids[end:]
    # Overlapping training windows (half a block apart) give more examples per epoch.
    parts = [CharWindows(part, block, max(1, block // 2)) for part in (before, after)]
    parts = [part for part in parts if len(part)]
    if end - start < block + 1 or not parts:
        raise DataError(
            f"the text has {len(ids)} characters: too few for block_size {block} "
            "and a validation split; use more text, fewer --folds or a smaller "
            "--set data.block_size"
        )
    if new:  # how often each character occurs in the training text
        counts = torch.bincount(torch.cat([before, after]), minlength=len(meta["chars"]))
        meta["char_counts"] = counts.tolist()
    train = parts[0] if len(parts) == 1 else ConcatDataset(parts)
    val = CharWindows(ids[start:end], block, stride=block)
    return train, val, meta


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """All windows of a text file, for `evaluate --data`."""
    ids = encode(read_text(Path(path)), meta)
    if len(ids) < meta["block_size"] + 1:
        raise DataError(f"{path} is shorter than block_size + 1 characters")
    return CharWindows(ids, meta["block_size"], stride=meta["block_size"])


def read_text(path: Path) -> str:
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        if path.exists() and not path.is_dir():  # a named pipe, a device...
            problem = "is not a regular file (a named pipe, a device...)"
        raise DataError(f"{path} {problem}; language-modeling expects a UTF-8 text file")
    try:
        # utf-8-sig: a byte-order mark is not a character of the text.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error}); convert it to UTF-8") from None
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror}") from None
    if not text.strip():
        raise DataError(f"{path} is empty; language-modeling needs text to learn from")
    return text


def encode(text: str, meta: dict) -> torch.Tensor:
    index = {char: i for i, char in enumerate(meta["chars"])}
    unknown = sorted(set(text) - set(index))
    if unknown:
        raise DataError(f"characters {unknown[:10]} are not in the model's vocabulary")
    return torch.tensor([index[char] for char in text], dtype=torch.long)


def decode(ids: list[int], meta: dict) -> str:
    return "".join(meta["chars"][i] for i in ids)


def make_text(seed: int, sentences: int = 1500) -> str:
    """Simple sentences from a tiny grammar: learnable, yet not memorised in one epoch."""
    g = torch.Generator().manual_seed(seed)

    def pick(words: list[str]) -> str:
        return words[torch.randint(len(words), (1,), generator=g).item()]

    lines = [
        f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)}{pick(ENDINGS)}" for _ in range(sentences)
    ]
    return "\n".join(lines) + "\n"


# --- predict and export --------------------------------------------------------------


def predict(model: torch.nn.Module, inputs: list[str], meta: dict) -> list[str]:
    """Each prompt continued by 200 sampled characters (seeded, so repeatable)."""
    generator = torch.Generator().manual_seed(0)
    lines = []
    for prompt in inputs:
        ids = encode(prompt or "\n", meta).unsqueeze(0)
        out = model.generate(ids, max_new_tokens=200, temperature=0.8, generator=generator)
        lines.append(decode(out[0].tolist(), meta))
    return lines


def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=meta["block_size"])
    tokens = torch.randint(len(meta["chars"]), (2, meta["block_size"]))
    return (tokens,), {"tokens": {0: batch, 1: length}}
