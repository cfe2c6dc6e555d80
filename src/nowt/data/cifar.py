"""CIFAR-10 from its "python version" batches (https://www.cs.toronto.edu/~kriz/cifar.html).

Each batch is a pickled dict with b"data" (uint8 [N, 3072], rows of R, G, B planes of 32x32) and b"labels".
Pickles can run code, so they are read with an unpickler that admits only what a numpy array needs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import torch

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_HELP = ("Download it with `nowt train --dataset cifar10 --download` (or nowt.data.fetch('cifar10')), or "
         "unpack https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and pass --data-dir to it.")


class _ArrayUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how protocol-2 pickles written by Python 3 spell bytes

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """One CIFAR-10 batch file as (uint8 [N, 3, 32, 32], int64 [N])."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e}). {_HELP}") from e
    # bytes 0..255 as CIFAR-10 has them: a cast would turn pixels already scaled to [0, 1] into zeros and
    # wrap larger values, without a word
    if data.dtype != np.uint8 and not (data.dtype.kind in "iu" and (not data.size or 0 <= data.min()
                                                                     and data.max() <= 255)):
        span = f"[{data.min()}, {data.max()}]" if data.size else "(empty)"
        raise ValueError(f"{path}: pixels must be bytes 0..255 (uint8, as CIFAR-10's batches hold them), got "
                         f"{data.dtype} in {span}")
    if labels.size and labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, got {labels.dtype}")
    data = data.astype(np.uint8, copy=False)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: expected data [N, 3072] and labels [N], "
                         f"got {data.shape} and {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise ValueError(f"{path}: labels outside 0..9")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels.astype(np.int64))


def _batch_dir(root: Path) -> Path:
    nested = root / "cifar-10-batches-py"
    return nested if nested.is_dir() else root


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None, *,
                 download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 (images, labels): float32 [N, 3, 32, 32] in [0, 1] and int64 [N].

    `root` holds the batches (or a `cifar-10-batches-py` folder with them); default: the nowt cache
    directory, downloaded there first when `download=True`.
    """
    from nowt.data.downloads import cache_dir, fetch

    if split not in _BATCHES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if download:
        root = fetch("cifar10", root)
    base = _batch_dir(Path(root) if root is not None else cache_dir() / "cifar10")
    missing = [name for name in _BATCHES[split] if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 file {missing[0]} not found in {base}. {_HELP}")
    parts = {name: read_cifar_batch(base / name) for name in _BATCHES[split]}
    _refuse_copies(base, parts)
    images, labels = torch.cat([p[0] for p in parts.values()]), torch.cat([p[1] for p in parts.values()])
    return images.float().div_(255.0), labels


def _refuse_copies(base: Path, parts: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """A training batch copied over another (its images would be trained on twice, another's never) is
    refused. (A test batch copied in place of a training batch is `check_test_not_in_train`'s refusal.)"""
    seen: dict[str, str] = {}
    for name, (images, _) in parts.items():
        digest = hashlib.sha1(images.numpy().tobytes()).hexdigest()
        if digest in seen:
            raise ValueError(f"CIFAR-10 files {seen[digest]} and {name} in {base} hold the same images: one "
                             f"is a copy of the other. {_HELP}")
        seen[digest] = name


def cifar_normalize(x: torch.Tensor) -> torch.Tensor:
    """Standardise [0, 1] CIFAR images per channel with the training-set mean and std."""
    mean = torch.tensor(CIFAR10_MEAN, dtype=x.dtype).view(3, 1, 1)
    std = torch.tensor(CIFAR10_STD, dtype=x.dtype).view(3, 1, 1)
    return (x - mean) / std
