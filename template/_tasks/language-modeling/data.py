{% block docstring %}
"""Data for language modelling: the built-in text, or your UTF-8 text file of any size.

Your data: one UTF-8 text file. Its tokens are encoded once: a text of more than
CACHE_MIN_BYTES goes into a token file (uint8 or uint16) under the output folder,
runs/.token-cache/, named after the file's size and modification time, the split and the
tokenizer, which later runs read instead of encoding again. Training draws random
windows of block_size tokens from the training text; evaluation uses train.eval_batches
batches of windows spread over the held-out text. So neither the memory nor the time of a
run grows with the corpus.

The end of the text (val_split of it, or a fold's stretch with --folds) is held out for
validation; no training window overlaps it. The tokenizer (data.tokenizer) is `char`,
every distinct character a token, or `bpe`, a byte-level BPE of data.vocab_size tokens that
Hugging Face `tokenizers` learns from the training text. Either is saved with the checkpoint.
"""
{% endblock %}

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import json
import math
import os
import time
from bisect import bisect_right
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

{% block imports %}
from .config import Config
from .plumbing import ConfigError, UserError
{% endblock %}
from .plumbing.hardware import global_rank

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
VERBS = ["sees", "likes", "finds", "chases", "watches", "draws"]
OBJECTS = ["the ball", "a red apple", "the garden", "a big house", "the river", "some bread"]
ENDINGS = [".", " today.", " at night.", " again.", " in the rain."]

TOKENIZERS = ("char", "bpe")
CHUNK_BYTES = 2**20  # text read, decoded and encoded at a time: small chunks stay in cache
# A larger text is encoded once into a token file under the output folder; a smaller one is
# encoded in memory at each start, which takes well under a second.
CACHE_MIN_BYTES = 2**20
BPE_SAMPLE_BYTES = 64 * 2**20  # BPE learns its merges from at most this much training text
CACHE_FORMAT = 1  # bump when the token files change, so that old ones are not reused


class DataError(UserError):
    """Missing, empty or unreadable data; the message names the file and the fix."""


class Windows(Dataset):
    """Windows of block_size tokens (inputs) and the same shifted by one (targets), one
    starting every `stride` tokens in each stretch [start, end) of `tokens`, never across
    its end. With stride 1, a random index is a random window of the text."""

    def __init__(self, tokens, stretches: list[tuple[int, int]], block_size: int, stride: int):
        self.tokens, self.block_size, self.stride = tokens, block_size, stride
        self.starts: list[int] = []  # where each stretch's first window starts
        self.ends: list[int] = []  # the index after each stretch's last window
        total = 0
        for start, end in stretches:
            if end - start > block_size:
                total += (end - start - block_size - 1) // stride + 1
                self.starts.append(start)
                self.ends.append(total)

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        stretch = bisect_right(self.ends, index)
        first = self.ends[stretch - 1] if stretch else 0
        start = self.starts[stretch] + (index - first) * self.stride
        chunk = np.asarray(self.tokens[start : start + self.block_size + 1], dtype=np.int64)
        chunk = torch.from_numpy(chunk)
        return chunk[:-1], chunk[1:]


class TokenFile:
    """A token file on disk, read a window at a time: the corpus never enters memory.

    Not a memory map: a map counts every page it has touched as this process's memory,
    which random windows spread over the whole file in a long run. Each process reads
    through a file of its own (loader processes too), so that their reads never mix.
    """

    def __init__(self, path: Path, dtype: str, length: int):
        self.path, self.dtype, self.length = path, np.dtype(dtype), length
        self.file, self.opened_by = None, None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(self.length)
        if self.opened_by != os.getpid():
            self.file, self.opened_by = self.path.open("rb"), os.getpid()
        self.file.seek(start * self.dtype.itemsize)
        return np.fromfile(self.file, dtype=self.dtype, count=stop - start)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "file": None, "opened_by": None}


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
    """Training and validation windows, and the metadata the model needs (the tokenizer).

    A checkpoint's `meta` is reused, so a resumed run keeps its tokenizer.
    """
{% block checks %}
    if cfg.data.tokenizer not in TOKENIZERS:
        raise ConfigError(f"data.tokenizer must be one of {TOKENIZERS}")
    if not 256 < cfg.data.vocab_size <= 2**16:
        raise ConfigError("data.vocab_size must be more than 256 (the bytes) and at most 65536")
{% endblock %}
    text = Text(None, make_text(cfg.train.seed)) if cfg.data.path is None else Text(cfg.data.path)
    block = meta["block_size"] if meta else cfg.data.block_size
    # The validation text is one stretch: the end, or the fold's block of the text. Training
    # windows come from the text before and after it, never across it.
    held_start, held_end = text.held_out(cfg, min_bytes=block + 1)
    cuts = [text.begin, held_start, held_end, text.end]
    started = time.perf_counter()
    tokens, lengths, tokenizer, counts = encode(text, cuts, meta, cfg)
    before, held, after = lengths
    train_stretches = [(0, before), (before + held, before + held + after)]
    train = Windows(tokens, train_stretches, block, stride=1)
    val = Windows(tokens, [(before, before + held)], block, stride=block)
    if not len(val) or not len(train):
        raise DataError(
            f"the text has {len(tokens)} tokens: too few for block_size {block} "
            "and a validation split; use more text, fewer --folds or a smaller "
            "--set data.block_size"
        )
    if meta is None:
        meta = {
            **tokenizer.meta(),
            "vocab_size": tokenizer.vocab_size,
            "block_size": block,
            "token_bytes": tokenizer.token_bytes(),  # for bits per byte
            "token_counts": counts,  # how often each token occurs in the training text
        }
        if text.path is not None and global_rank() == 0:
            seconds = time.perf_counter() - started
            print(
{% block described %}
                f"{text.path}: {len(tokens):,} tokens ({cfg.data.tokenizer}, "
{% endblock %}
                f"{tokenizer.vocab_size:,} in the vocabulary), {held:,} held out for "
                f"validation; ready in {seconds:.1f} s",
                flush=True,
            )
    return train, val, meta


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """Windows of a whole text file, for `evaluate --data`."""
    text = Text(path)
    tokens, _, _, _ = encode(text, [text.begin, text.end], meta, cfg)
    if len(tokens) < meta["block_size"] + 1:
        raise DataError(f"{path} has fewer than block_size + 1 tokens; evaluate on more text")
    return Windows(tokens, [(0, len(tokens))], meta["block_size"], stride=meta["block_size"])


# --- the text, read in chunks ------------------------------------------------------------


class Text:
    """A UTF-8 text, from a file or from memory, read a chunk of bytes at a time."""

    def __init__(self, path: str | Path | None, data: str | None = None):
        self.path = None if path is None else Path(path)
        self.data = None if data is None else data.encode("utf-8")
        if self.path is not None:
            if not self.path.is_file():
                problem = "is a folder" if self.path.is_dir() else "does not exist"
                if self.path.exists() and not self.path.is_dir():  # a named pipe, a device...
                    problem = "is not a regular file (a named pipe, a device...)"
                raise DataError(
                    f"{self.path} {problem}; language-modeling expects a UTF-8 text file"
                )
            stat = self.path.stat()
            self.size, self.modified = stat.st_size, stat.st_mtime_ns
        else:
            self.size, self.modified = len(self.data), 0
        with self.open() as file:
            head = file.read(2**16)
        # utf-8-sig: a byte-order mark is not a character of the text.
        self.begin, self.end = (3 if head.startswith(codecs.BOM_UTF8) else 0), self.size
        if self.size <= len(head) and not head[self.begin :].decode(errors="ignore").strip():
            raise DataError(f"{self.path} is empty; language-modeling needs text to learn from")

    def open(self):
        if self.path is None:
            return io.BytesIO(self.data)
        try:
            return self.path.open("rb")
        except OSError as error:
            raise DataError(f"cannot read {self.path}: {error.strerror}") from None

    def held_out(self, cfg: Config, min_bytes: int) -> tuple[int, int]:
        """The byte offsets of the validation stretch, at character boundaries: the last
        val_split of the text, or fold `fold` of `folds` equal blocks (as splits.py splits
        a sequence that is not shuffled), without listing every offset."""
        n, folds, fold = self.end - self.begin, cfg.data.folds, cfg.data.fold
        if folds is None:
            size = min(n, max(min_bytes, math.floor(n * cfg.data.val_split)))
            start, end = n - size, n
        else:
            if n < folds:
                raise UserError(f"{n} bytes of text cannot make {folds} folds; use fewer --folds")
            size, extra = divmod(n, folds)
            start = (fold - 1) * size + min(fold - 1, extra)
            end = start + size + (fold - 1 < extra)
        with self.open() as file:
            return tuple(self.char_start(file, self.begin + offset) for offset in (start, end))

    def char_start(self, file, offset: int) -> int:
        """The first character boundary at or after a byte offset."""
        file.seek(offset)
        head = file.read(3)
        return offset + next((i for i, b in enumerate(head) if b & 0xC0 != 0x80), len(head))

    def chunks(self, file, start: int, end: int) -> Iterator[str]:
        """The text between two character boundaries, CHUNK_BYTES at a time."""
        decoder = codecs.getincrementaldecoder("utf-8")()
        file.seek(start)
        position = start
        while position < end:
            data = file.read(min(CHUNK_BYTES, end - position))
            if not data:  # the file shrank while being read
                raise DataError(f"{self.path} changed while being read; train again")
            try:
                text = decoder.decode(data, final=position + len(data) >= end)
            except UnicodeDecodeError as error:
                where = f"byte {position + error.start:,}: {error.reason}"
                raise DataError(
                    f"{self.path} is not UTF-8 text ({where}); convert it to UTF-8"
                ) from None
            position += len(data)
            yield text


# --- tokenizers ------------------------------------------------------------------------------


class CharTokenizer:
    """Every distinct character a token: a table from code points to ids. A new tokenizer
    (`grow`) gives each character it meets the next id."""

    UNKNOWN = 2**16 - 1  # the table's entry for a character without an id

    def __init__(self, chars: str = "", grow: bool = False):
        self.chars, self.grow = "", grow
        self.table = np.full(0x110000, self.UNKNOWN, dtype=np.uint16)
        self.add(chars)

    def add(self, chars: str) -> None:
        self.table[[ord(char) for char in chars]] = np.arange(
            len(self.chars), len(self.chars) + len(chars)
        )
        self.chars += chars
        # The fast path of text whose characters are all below 256 (ASCII, Latin-1): a byte a
        # character, translated by bytes.translate; 255 marks a character without an id.
        self.bytes_table = bytes(np.minimum(self.table[:256], 255).astype(np.uint8))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def ids(self, text: str, where: str = "the text") -> np.ndarray:
        # In pieces: most pieces of most texts take the fast path, even when a few of their
        # characters are above 255 (a curly quote, an arrow).
        pieces = [text[start : start + 2**16] for start in range(0, len(text), 2**16)]
        return np.concatenate([self.piece_ids(piece, where) for piece in pieces] or [[]])

    def piece_ids(self, text: str, where: str) -> np.ndarray:
        try:
            latin = bytearray(text.encode("latin-1"))  # a bytearray: numpy may write to it
        except UnicodeEncodeError:
            latin = None
        if latin is not None and self.vocab_size < 255:
            ids = latin.translate(self.bytes_table)
            if 255 not in ids:
                return np.frombuffer(ids, dtype=np.uint8)
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = self.table[points]
        if ids.max(initial=0) == self.UNKNOWN:
            new = np.unique(points[ids == self.UNKNOWN])
            if not self.grow:
                raise DataError(
                    f"{where} has characters {[chr(p) for p in new[:10]]} that are not in the "
                    "model's vocabulary; use text with the characters of the training text"
                )
            if len(self.chars) + len(new) > self.UNKNOWN:
                raise DataError(
                    f"{where} has more than {self.UNKNOWN} distinct characters; "
                    "use --set data.tokenizer=bpe"
                )
            self.add("".join(map(chr, new)))
            ids = self.table[points]
        return ids

    def encode(self, text: str, where: str = "the text") -> list[int]:
        return self.ids(text, where).tolist()

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_bytes(self) -> list[int]:
        return [len(char.encode("utf-8")) for char in self.chars]

    def meta(self) -> dict:
        return {"tokenizer": "char", "chars": self.chars}


class BPETokenizer:
    """A byte-level BPE (Hugging Face tokenizers, as GPT-2's): any text encodes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @classmethod
    def learn(cls, texts: Iterator[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes
            show_progress=False,
        )
        tokenizer.train_from_iterator(texts, trainer)
        return cls(tokenizer)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def ids(self, text: str, where: str = "the text") -> np.ndarray:
        # Pieces of a few thousand characters, cut after a newline, encoded in parallel.
        pieces, start = [], 0
        while start < len(text):
            end = text.find("\n", start + 2**12) + 1 or len(text)
            pieces.append(text[start:end])
            start = end
        encodings = self.tokenizer.encode_batch_fast(pieces)
        return np.concatenate([np.array(e.ids, dtype=np.int32) for e in encodings] or [[]])

    def encode(self, text: str, where: str = "the text") -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def token_bytes(self) -> list[int]:
        sizes = [0] * self.vocab_size
        for token, index in self.tokenizer.get_vocab().items():
            sizes[index] = len(token)  # byte-level: one character a byte
        return sizes

    def meta(self) -> dict:
        return {"tokenizer": "bpe", "bpe": self.tokenizer.to_str()}


def load_tokenizer(meta: dict) -> CharTokenizer | BPETokenizer:
    """The tokenizer saved in a checkpoint's metadata."""
    if meta["tokenizer"] == "bpe":
        return BPETokenizer.from_json(meta["bpe"])
    return CharTokenizer(meta["chars"])


{% block new_tokenizer %}
def new_tokenizer(text: Text, cuts: list[int], cfg: Config) -> CharTokenizer | BPETokenizer:
    """A char tokenizer that grows as the text is encoded, or a BPE learned from (up to
    BPE_SAMPLE_BYTES of) the training text: the parts before and after the held-out one."""
    if cfg.data.tokenizer == "char":
        return CharTokenizer(grow=True)

    def training_text() -> Iterator[str]:
        left = BPE_SAMPLE_BYTES
        with text.open() as file:
            for start, end in ((cuts[0], cuts[1]), (cuts[2], cuts[3])):
                for chunk in text.chunks(file, start, end):
                    yield chunk[:left]
                    left -= len(chunk)
                    if left <= 0:
                        return

    return BPETokenizer.learn(training_text(), cfg.data.vocab_size)


{% endblock %}
# --- encoding, once -------------------------------------------------------------------------


def encode(text: Text, cuts: list[int], meta: dict | None, cfg: Config):
    """(tokens, the number of tokens of each part between the byte offsets `cuts`, the
    tokenizer, how often each token occurs in the training parts: the first and the third).

    A new run makes its tokenizer (`meta` None); a resumed one, evaluate and predict take
    the checkpoint's. A large file's tokens are read from, or written to, the token cache.
    """
    if text.path is None or text.size <= CACHE_MIN_BYTES:
        tokenizer = load_tokenizer(meta) if meta else new_tokenizer(text, cuts, cfg)
        parts = []
        lengths, counts = encode_text(text, cuts, tokenizer, lambda ids, _: parts.append(ids))
        dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.uint16
        return np.concatenate(parts).astype(dtype, copy=False), lengths, tokenizer, counts

    folder = Path(cfg.train.output_dir) / ".token-cache"
    signature = [CACHE_FORMAT, text.size, text.modified, cuts]
    # The tokens a new run makes, and those of a checkpoint's tokenizer when it differs.
{% block made %}
    made = [*signature, cfg.data.tokenizer, cfg.data.vocab_size]
{% endblock %}
    keys = [made] if meta is None else [made, [*signature, fingerprint(meta)]]
    for key in keys:
        name = cache_name(text.path, key)
        try:
            saved = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not encoded yet, or not completely
        if meta is None or fingerprint(saved["tokenizer"]) == fingerprint(meta):
            tokens = TokenFile(folder / f"{name}.tokens", saved["dtype"], saved["size"])
            return tokens, saved["lengths"], load_tokenizer(saved["tokenizer"]), saved["counts"]

    tokenizer = load_tokenizer(meta) if meta else new_tokenizer(text, cuts, cfg)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        name = cache_name(text.path, keys[-1])
        # Written under a temporary name, then renamed: processes that encode the same file
        # at once (the ranks of a distributed run) never read a half-written one.
        with temporary(folder / f"{name}.tokens") as partial:
            with TokenWriter(partial) as writer:
                lengths, counts = encode_text(text, cuts, tokenizer, writer)
        saved = {
            "dtype": np.dtype(writer.dtype).name,
            "size": sum(lengths),
            "lengths": lengths,
            "tokenizer": tokenizer.meta(),
            "counts": counts,
        }
        with temporary(folder / f"{name}.json") as partial:
            partial.write_text(json.dumps(saved), encoding="utf-8")
    except OSError as error:
        raise DataError(
            f"cannot write the token cache {folder}: {error.strerror}; pick another --output-dir"
        ) from None
    tokens = TokenFile(folder / f"{name}.tokens", saved["dtype"], saved["size"])
    return tokens, lengths, tokenizer, counts


def encode_text(text: Text, cuts: list[int], tokenizer, write) -> tuple[list[int], list[int]]:
    """Encode the parts of the text between the byte offsets `cuts`, a chunk at a time,
    passing the ids to write(ids, vocab_size). Returns each part's number of tokens, and how
    often each token occurs in the training parts (the first and the third)."""
    counts = torch.zeros(2**16, dtype=torch.long)
    lengths = []
    with text.open() as file:
        for part, (start, end) in enumerate(pairwise(cuts)):
            lengths.append(0)
            for chunk in text.chunks(file, start, end):
                ids = tokenizer.ids(chunk, where=str(text.path or "the built-in text"))
                dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.uint16
                ids = ids.astype(dtype, copy=False)
                write(ids, tokenizer.vocab_size)
                if part != 1:  # torch counts uint8 and int32 fast, numpy neither
                    small = ids if ids.dtype == np.uint8 else ids.astype(np.int32)
                    vocab = tokenizer.vocab_size
                    counts[:vocab] += torch.bincount(torch.from_numpy(small), minlength=vocab)
                lengths[-1] += len(ids)
    return lengths, counts[: tokenizer.vocab_size].tolist()


class TokenWriter:
    """Token ids appended to a file: uint8 while the vocabulary fits in a byte, then uint16."""

    def __init__(self, path: Path):
        self.path, self.dtype = path, np.uint8
        self.file = path.open("wb")

    def __call__(self, ids: np.ndarray, vocab_size: int) -> None:
        if vocab_size > 256 and self.dtype == np.uint8:  # rewrite what is written, wider
            self.file.close()
            narrow = self.path.with_name(self.path.name + ".narrow")
            os.replace(self.path, narrow)
            self.file, self.dtype = self.path.open("wb"), np.uint16
            with narrow.open("rb") as old:
                while len(block := np.fromfile(old, dtype=np.uint8, count=CHUNK_BYTES)):
                    block.astype(np.uint16).tofile(self.file)
            narrow.unlink()
        ids.astype(self.dtype, copy=False).tofile(self.file)

    def __enter__(self) -> TokenWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()


@contextlib.contextmanager
def temporary(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to it when the block succeeds, else removed."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
        partial.with_name(partial.name + ".narrow").unlink(missing_ok=True)


def cache_name(path: Path, key: list) -> str:
    """The file's name and a digest of what its tokens depend on."""
    return f"{path.name}.{hashlib.sha1(json.dumps(key).encode()).hexdigest()[:16]}"


def fingerprint(meta: dict) -> str:
    """A tokenizer's identity, from the metadata that describes it."""
    described = meta["bpe"] if meta["tokenizer"] == "bpe" else meta["chars"]
    return f"{meta['tokenizer']}-{hashlib.sha1(described.encode()).hexdigest()}"


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


def predict(
    model: torch.nn.Module,
    inputs: list[str],
    meta: dict,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int | None = None,
) -> list[str]:
    """Each prompt continued by max_new_tokens sampled tokens (seeded, so repeatable); a
    line of dashes between the samples, as nanoGPT's sample.py prints them."""
    if max_new_tokens < 0 or temperature <= 0 or (top_k is not None and top_k < 1):
        raise UserError(
            "predict needs --max-new-tokens 0 or more, --temperature above 0 and --top-k 1 "
            f"or more; got {max_new_tokens}, {temperature} and {top_k}"
        )
    tokenizer = load_tokenizer(meta)
    generator = torch.Generator().manual_seed(0)
    lines = []
    for prompt in inputs:
        # An empty prompt starts from the most common token of the training text.
        ids = tokenizer.encode(prompt, "the prompt") or [int(np.argmax(meta["token_counts"]))]
        out = model.generate(
            torch.tensor([ids]), max_new_tokens, temperature, top_k, generator=generator
        )
        lines += ["-" * 15] if lines else []
        lines.append(tokenizer.decode(out[0].tolist()))
    return lines


def example_inputs(meta: dict) -> tuple[tuple[torch.Tensor, ...], dict]:
    """An input to trace for torch.export, and which of its dimensions may vary."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    length = torch.export.Dim("length", min=1, max=meta["block_size"])
    tokens = torch.randint(meta["vocab_size"], (2, meta["block_size"]))
    return (tokens,), {"tokens": {0: batch, 1: length}}
