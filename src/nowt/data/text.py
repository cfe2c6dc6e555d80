"""Text corpora for language models, byte level: windows of real text as token ids 0..255.

`fortunes` is the Debian package of that name (`apt-get install fortunes`): the fortune files in
/usr/share/games/fortunes (each file NAME that has its index NAME.dat beside it), about 2.7 MB of English
quips, poems, definitions and ASCII art, read as bytes (mostly ASCII, so a byte is a character; bits per byte
is bits per character). A folder without .dat files is read as its `*.txt` files.

Splits are contiguous: each file's first 90% of bytes are training text, the next 5% validation, the last 5%
test, and the files' parts are concatenated in name order, so every split mixes every file and no window
crosses a split. A split becomes non-overlapping windows of `context` bytes, x = text[i:i+T] and
y = text[i+1:i+T+1] (next-byte targets at every position).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

VOCAB = 256  # byte level: every byte value is a token
TEXT_DATASETS = {"fortunes": (Path("/usr/share/games/fortunes"), "fortunes")}  # name -> (default dir, apt)
SPLITS = (0.9, 0.05, 0.05)  # train, validation, test: each file's contiguous parts
DEFAULT_CONTEXT = 128


@dataclass
class TextSplits:
    """The three splits as (x, y) windows of long token ids [N, T]."""

    train: tuple[Tensor, Tensor]
    validation: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


def corpus_files(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The files of corpus `name`, by name: those with a NAME.dat index beside them, else `*.txt`. A
    missing folder or one without such files is a one-line FileNotFoundError naming the path and package."""
    default, package = TEXT_DATASETS[name]
    folder = Path(root) if root is not None else default
    files = sorted(p for p in folder.glob("*") if p.is_file() and p.with_name(p.name + ".dat").is_file()) \
        if folder.is_dir() else []
    files = files or sorted(p for p in folder.glob("*.txt") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{name} corpus not found: no fortune files (NAME beside NAME.dat) or *.txt "
                                f"in {folder}; install it with `apt-get install {package}` (Debian/Ubuntu) "
                                "or point --data-dir at a folder of text files")
    return files


def split_text(documents: list[bytes], fractions: tuple[float, ...] = SPLITS) -> list[bytes]:
    """Each document cut into contiguous parts of `fractions` of its length; part k of every document,
    concatenated in order, is split k."""
    bounds = [sum(fractions[:k]) for k in range(len(fractions) + 1)]
    return [b"".join(d[round(lo * len(d)):round(hi * len(d))] for d in documents)
            for lo, hi in zip(bounds, bounds[1:], strict=False)]


def windows(text: bytes, context: int) -> tuple[Tensor, Tensor]:
    """Non-overlapping windows of `context` bytes and their next-byte targets, long tensors [N, context]."""
    if context < 1:
        raise ValueError(f"--context must be at least 1, got {context}")
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long() if text else torch.zeros(0).long()
    n = max(len(tokens) - 1, 0) // context
    return tokens[:n * context].view(n, context), tokens[1:n * context + 1].view(n, context)


def load_text(name: str, root: str | os.PathLike | None = None, context: int = DEFAULT_CONTEXT,
              train_size: int | None = None) -> TextSplits:
    """Corpus `name`'s train / validation / test windows (see the module docstring). `train_size`: the
    first N training windows (contiguous text, the same for every run)."""
    documents = [p.read_bytes() for p in corpus_files(name, root)]
    parts = [windows(text, context) for text in split_text(documents)]
    for part, what in zip(parts, ("training", "validation", "test"), strict=True):
        if len(part[0]) == 0:
            raise ValueError(f"{name}: the {what} split holds less than one window of --context {context} "
                             "bytes; use a shorter --context or more text")
    if train_size is not None and train_size > len(parts[0][0]):  # said, as of images: config.json keeps it
        warnings.warn(f"--train-size {train_size} is more than the {len(parts[0][0])} training windows of "
                      f"{name} (--context {context}): training on all {len(parts[0][0])}", stacklevel=2)
    train = parts[0] if train_size is None else (parts[0][0][:train_size], parts[0][1][:train_size])
    return TextSplits(train, parts[1], parts[2])


def unigram_bits(tokens: Tensor) -> float:
    """The entropy (bits per token) of the tokens' own frequencies: what a model that ignores context can
    reach at best on them, the bar a language model has to pass."""
    p = torch.bincount(tokens.flatten(), minlength=VOCAB).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log()).sum()) / math.log(2)
