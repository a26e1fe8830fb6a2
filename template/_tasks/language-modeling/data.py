{% block docstring %}
"""Data for language modelling: the built-in text, or your UTF-8 text file of any size.

Your data: one UTF-8 text file. Its end (data.val_split of it) is held out for validation;
training draws random windows of block_size tokens from the text before it, never across
into it, and evaluation uses train.eval_batches batches of windows spread over the held-out
text. The tokenizer (data.tokenizer) is `char`, every distinct character a token, or `bpe`,
a byte-level BPE of data.vocab_size tokens that Hugging Face `tokenizers` learns from the
training text; either is saved with the checkpoint.

A text of more than CACHE_MIN_BYTES is encoded once, into a token file in the output folder
(runs/.token-cache/) named after a hash of the text's bytes, the split and the tokenizer.
Later runs read their windows from it, so neither the memory nor the start of a run grows
with the corpus; a token file that fails its checks is encoded again.
"""
{% endblock %}

from __future__ import annotations

import codecs
import hashlib
import io
import json
import logging
import math
import os
import struct
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch.utils.data import Dataset

{% block imports %}
from .config import Config
{% endblock %}

log = logging.getLogger(__name__)

SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a small bird", "the teacher"]
VERBS = ["sees", "likes", "finds", "chases", "watches", "draws"]
OBJECTS = ["the ball", "a red apple", "the garden", "a big house", "the river", "some bread"]
ENDINGS = [".", " today.", " at night.", " again.", " in the rain."]

CHUNK_BYTES = 2**20  # text read, decoded and encoded at a time: small chunks stay in cache
# A larger text is encoded once into a token file in the output folder; a smaller one is
# encoded in memory at each start, which takes well under a second.
CACHE_MIN_BYTES = 2**20
BPE_SAMPLE_BYTES = 64 * 2**20  # BPE learns its merges from at most this much training text
# A token file is this header, its tokens (uint8 or uint16), then a JSON trailer (the
# tokenizer, the parts' lengths, the token counts). The header holds a magic number (changed
# with the format), a digest of what the tokens depend on, the number of tokens, their size
# in bytes and the trailer's: a file that disagrees with it is not read.
MAGIC = b"TOKENS02"
HEADER = struct.Struct("<8s32sQQQ")


class DataError(Exception):
    """Missing, empty or unreadable data; the message names the file and the fix."""


class Windows(Dataset):
    """Windows of block_size tokens (inputs) and the same shifted by one (targets), one
    starting every `stride` tokens of tokens[start:end], never across its end. With
    stride 1, a random index is a random window of the text."""

    def __init__(self, tokens, start: int, end: int, block_size: int, stride: int):
        self.tokens, self.start, self.block_size, self.stride = tokens, start, block_size, stride
        self.length = max(0, (end - start - block_size - 1) // stride + 1)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.start + index * self.stride
        chunk = np.asarray(self.tokens[start : start + self.block_size + 1], dtype=np.int64)
        chunk = torch.from_numpy(chunk)
        return chunk[:-1], chunk[1:]


def build_datasets(cfg: Config, meta: dict | None = None) -> tuple[Dataset, Dataset, dict]:
    """Training and validation windows, and the metadata the model needs (the tokenizer).

    A checkpoint's `meta` is reused, so a resumed run keeps its tokenizer.
    """
    text = Text(None, make_text(cfg.train.seed)) if cfg.data.path is None else Text(cfg.data.path)
    block = meta["block_size"] if meta else cfg.data.block_size
    held_start = text.held_out(cfg.data.val_split, min_bytes=block + 1)
    started = time.perf_counter()
    tokens, (before, held), tokenizer, counts = encode(
        text, [text.begin, held_start, text.end], meta, cfg
    )
    train = Windows(tokens, 0, before, block, stride=1)
    val = Windows(tokens, before, before + held, block, stride=block)
    if not len(val) or not len(train):
        raise DataError(
            f"the text has {before + held} tokens: too few for block_size {block} and a "
            "validation split; use more text or a smaller data.block_size"
        )
    if meta is None:
        meta = {
            **tokenizer.meta(),
            "vocab_size": tokenizer.vocab_size,
            "block_size": block,
            "token_bytes": tokenizer.token_bytes(),  # for bits per byte
            "token_counts": counts,  # how often each token occurs in the training text
        }
        if text.path is not None:
            seconds = time.perf_counter() - started
            log.info(
{% block described %}
                f"{text.path}: {before + held:,} tokens ({cfg.data.tokenizer}, "
{% endblock %}
                f"{tokenizer.vocab_size:,} in the vocabulary), {held:,} held out for "
                f"validation; ready in {seconds:.1f} s"
            )
    return train, val, meta


def load_dataset(path: str | Path, cfg: Config, meta: dict) -> Dataset:
    """Windows of a whole text file, for `evaluate --data`."""
    text = Text(path)
    tokens, (length,), _, _ = encode(text, [text.begin, text.end], meta, cfg)
    block = meta["block_size"]
    if length < block + 1:
        raise DataError(f"{path} has fewer than block_size + 1 tokens; evaluate on more text")
    return Windows(tokens, 0, length, block, stride=block)


# --- the text, read in chunks ------------------------------------------------------------


class Text:
    """A UTF-8 text, from a file or from memory, read a chunk of bytes at a time."""

    def __init__(self, path: str | Path | None, data: str | None = None):
        self.path = None if path is None else Path(path)
        self.data = None if data is None else data.encode("utf-8")
        if self.path is not None and not self.path.is_file():
            problem = "is a folder" if self.path.is_dir() else "does not exist"
            if self.path.exists() and not self.path.is_dir():  # a named pipe, a device...
                problem = "is not a regular file (a named pipe, a device...)"
            raise DataError(f"{self.path} {problem}; language-modeling expects a UTF-8 text file")
        self.size = len(self.data) if self.path is None else self.path.stat().st_size
        with self.open() as file:
            head = file.read(2**16)
        # As utf-8-sig reads it: a byte-order mark is not a character of the text.
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

    def sha256(self) -> str:
        """A hash of the text's bytes: the token cache's key, so an edited text is encoded
        again whatever its size and time say."""
        sha = hashlib.sha256()
        with self.open() as file:
            while block := file.read(CHUNK_BYTES):
                sha.update(block)
        return sha.hexdigest()

    def held_out(self, val_split: float, min_bytes: int) -> int:
        """Where the held-out end of the text starts, at a character boundary: the last
        val_split of its bytes, at least min_bytes."""
        n = self.end - self.begin
        start = self.end - min(n, max(min_bytes, math.floor(n * val_split)))
        with self.open() as file:
            file.seek(start)  # the first byte that does not continue a character
            head = file.read(3)
        return start + next((i for i, b in enumerate(head) if b & 0xC0 != 0x80), len(head))

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
                    "use data.tokenizer=bpe"
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


def fingerprint(meta: dict) -> str:
    """A tokenizer's identity, from the metadata that describes it."""
    described = meta["bpe"] if meta["tokenizer"] == "bpe" else meta["chars"]
    return f"{meta['tokenizer']}-{hashlib.sha256(described.encode()).hexdigest()}"


{% block new_tokenizer %}
def new_tokenizer(text: Text, cuts: list[int], cfg: Config) -> CharTokenizer | BPETokenizer:
    """A char tokenizer that grows as the text is encoded, or a BPE learned from (up to
    BPE_SAMPLE_BYTES of) the training text: the part before the held-out one."""
    if cfg.data.tokenizer == "char":
        return CharTokenizer(grow=True)

    def training_text() -> Iterator[str]:
        left = BPE_SAMPLE_BYTES
        with text.open() as file:
            for chunk in text.chunks(file, cuts[0], cuts[1]):
                yield chunk[:left]
                left -= len(chunk)
                if left <= 0:
                    return

    return BPETokenizer.learn(training_text(), cfg.data.vocab_size)


{% endblock %}
# --- encoding, once: the token cache ---------------------------------------------------------


def encode(text: Text, cuts: list[int], meta: dict | None, cfg: Config):
    """(tokens, the number of tokens of each part between the byte offsets `cuts`, the
    tokenizer, how often each token occurs in the first part: the training text).

    A new run makes its tokenizer (`meta` None); a resumed one and evaluate take the
    checkpoint's. A large file's tokens come from its token file, encoded first if needed.
    """
    if text.path is None or text.size <= CACHE_MIN_BYTES:
        tokenizer = load_tokenizer(meta) if meta else new_tokenizer(text, cuts, cfg)
        parts = []
        lengths, counts = encode_text(text, cuts, tokenizer, parts.append)
        dtype = np.uint8 if tokenizer.vocab_size <= 256 else np.uint16
        return np.concatenate(parts).astype(dtype, copy=False), lengths, tokenizer, counts

    folder = Path(cfg.train.output_dir) / ".token-cache"
    signature = [text.sha256(), cuts]
{% block made %}
    made = [*signature, cfg.data.tokenizer, cfg.data.vocab_size]
{% endblock %}
    key = made
    if meta is not None:  # the file the run made at its start, if it has this tokenizer
        found = open_cache(cache_path(folder, text.path, made), made, quiet=True)
        if found and fingerprint(found[1]["tokenizer"]) == fingerprint(meta):
            return found[0], found[1]["lengths"], load_tokenizer(meta), found[1]["counts"]
        key = [*signature, fingerprint(meta)]
    path = cache_path(folder, text.path, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Every process takes the lock: the first encodes, the others then find the file.
        with FileLock(path.with_suffix(".lock")):
            found = open_cache(path, key)
            if found is None:
                tokenizer = load_tokenizer(meta) if meta else new_tokenizer(text, cuts, cfg)
                write_cache(path, key, text, cuts, tokenizer)
                found = open_cache(path, key)
    except OSError as error:
        raise DataError(
            f"cannot write the token cache {folder}: {error.strerror}; pick another --output-dir"
        ) from None
    tokens, saved = found
    return tokens, saved["lengths"], load_tokenizer(saved["tokenizer"]), saved["counts"]


def encode_text(
    text: Text, cuts: list[int], tokenizer, write: Callable[[np.ndarray], object]
) -> tuple[list[int], list[int]]:
    """Encode the parts of the text between the byte offsets `cuts` a chunk at a time,
    passing the ids to write(ids). Returns each part's number of tokens, and how often each
    token occurs in the first part (the training text)."""
    counts = torch.zeros(2**16, dtype=torch.long)
    lengths = []
    with text.open() as file:
        for part, (start, end) in enumerate(pairwise(cuts)):
            lengths.append(0)
            for chunk in text.chunks(file, start, end):
                ids = tokenizer.ids(chunk, where=str(text.path or "the built-in text"))
                write(ids)
                if part == 0:  # torch counts uint8 and int32 fast, numpy neither
                    small = ids if ids.dtype == np.uint8 else ids.astype(np.int32)
                    vocab = tokenizer.vocab_size
                    counts[:vocab] += torch.bincount(torch.from_numpy(small), minlength=vocab)
                lengths[-1] += len(ids)
    return lengths, counts[: tokenizer.vocab_size].tolist()


class TokenFile:
    """A token file's tokens, read a window at a time: the corpus never enters memory.

    Not a memory map: a map counts every page it has touched as this process's memory,
    which random windows spread over the whole file in a long run. Each process reads
    through a file of its own (loader processes too), so that their reads never mix.
    """

    def __init__(self, path: Path, itemsize: int, length: int):
        self.path, self.length = path, length
        self.dtype = np.dtype(np.uint8 if itemsize == 1 else np.uint16)
        self.file, self.opened_by = None, None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, window: slice) -> np.ndarray:
        start, stop, _ = window.indices(self.length)
        if self.opened_by != os.getpid():
            self.file, self.opened_by = self.path.open("rb"), os.getpid()
        self.file.seek(HEADER.size + start * self.dtype.itemsize)
        return np.frombuffer(self.file.read((stop - start) * self.dtype.itemsize), self.dtype)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "file": None, "opened_by": None}


def cache_path(folder: Path, text_path: Path, key: list) -> Path:
    return folder / f"{text_path.name}.{digest(key).hex()[:16]}.tokens"


def digest(key: list) -> bytes:
    """A hash of what a token file's tokens depend on."""
    return hashlib.sha256(json.dumps(key).encode()).digest()


def open_cache(path: Path, key: list, quiet: bool = False):
    """(tokens, the trailer) of the token file of `key`, or None when there is none or it
    fails a check: then it is treated as absent, with a note (unless quiet)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            magic, made_for, length, itemsize, trailer = HEADER.unpack(file.read(HEADER.size))
            expected = HEADER.size + length * itemsize + trailer
            if magic != MAGIC or made_for != digest(key) or itemsize not in (1, 2):
                problem = "its header does not match this text and settings"
            elif size != expected:
                problem = f"it holds {size:,} bytes, its header says {expected:,}"
            else:
                file.seek(HEADER.size + length * itemsize)
                return TokenFile(path, itemsize, length), json.loads(file.read(trailer))
    except FileNotFoundError:
        return None
    except (OSError, struct.error, ValueError) as error:
        problem = f"it cannot be read ({error})"
    if not quiet:
        log.info(f"{path} is damaged or stale ({problem}): encoding the text again")
    return None


def write_cache(path: Path, key: list, text: Text, cuts: list[int], tokenizer) -> None:
    """Encode the text into the token file `path`: the tokens written as uint16 (a char
    tokenizer learns its size on the way), narrowed to uint8 when the vocabulary fits a
    byte, the header written last, all under a temporary name renamed at the end."""
    for stale in path.parent.glob("*.tmp"):  # left by builds that were killed
        try:
            with FileLock(stale.with_suffix(".lock"), timeout=0):
                stale.unlink(missing_ok=True)
        except Timeout:
            pass  # being written now, by a process that holds its lock
    partial = path.with_suffix(".tmp")
    try:
        with partial.open("w+b") as file:
            file.write(bytes(HEADER.size))  # zeros until the tokens are all there

            def write(ids: np.ndarray) -> None:
                file.write(ids.astype(np.uint16).tobytes())

            lengths, counts = encode_text(text, cuts, tokenizer, write)
            length, itemsize = sum(lengths), 1 if tokenizer.vocab_size <= 256 else 2
            if itemsize == 1:  # narrowed in place: each block lands before where it was read
                for start in range(0, length, CHUNK_BYTES):
                    file.seek(HEADER.size + 2 * start)
                    block = np.frombuffer(file.read(2 * CHUNK_BYTES), dtype=np.uint16)
                    file.seek(HEADER.size + start)
                    file.write(block.astype(np.uint8).tobytes())
                file.truncate(HEADER.size + length)
            trailer = {"lengths": lengths, "tokenizer": tokenizer.meta(), "counts": counts}
            file.seek(0, os.SEEK_END)
            written = file.write(json.dumps(trailer).encode())
            file.seek(0)
            file.write(HEADER.pack(MAGIC, digest(key), length, itemsize, written))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


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
    if max_new_tokens < 0 or not 0 < temperature < math.inf or (top_k is not None and top_k < 1):
        raise DataError(
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
