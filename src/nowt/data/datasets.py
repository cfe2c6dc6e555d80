"""MNIST (embedded copy) and Fashion-MNIST loaders returning plain tensors.

Wrap the result in ``torch.utils.data.TensorDataset`` to batch it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
from pathlib import Path

import torch

from nowt.data.idx import read_idx

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_EMBEDDED_DIR = Path(__file__).resolve().parent / "mnist"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

_MNIST_HELP = (
    "Get MNIST from https://ossci-datasets.s3.amazonaws.com/mnist/ "
    "(mirror of http://yann.lecun.com/exdb/mnist/), "
    "or call load_mnist(root=None) to use the copy bundled with nowt."
)
_FASHION_HELP = (
    "Install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), download it with "
    "`--download` (nowt.data.fetch('fashion-mnist')), or get the four files from "
    "https://github.com/zalandoresearch/fashion-mnist and pass root=<that directory>."
)


#: SHA-256 of Fashion-MNIST's four raw (uncompressed) IDX files (MNIST's are the embedded SHA256SUMS).
_FASHION_SHA256 = {
    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888": "train-images-idx3-ubyte",
    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9": "train-labels-idx1-ubyte",
    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b": "t10k-images-idx3-ubyte",
    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34": "t10k-labels-idx1-ubyte",
}


def _check_split(split: str) -> tuple[str, str]:
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _FILES[split]


def _to_pair(images: torch.Tensor, labels: torch.Tensor, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if images.dim() != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise ValueError(
            f"{where}: expected images [N,28,28] and labels [N], got {tuple(images.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if labels.numel() and int(labels.max()) > 9:
        raise ValueError(f"{where}: label {int(labels.max())} out of range 0..9")
    return images.unsqueeze(1).float().div_(255.0), labels.long()


def _embedded_sums() -> dict[str, str]:
    """File name -> SHA-256 of the embedded MNIST's raw IDX files (``SHA256SUMS``)."""
    sums = {}
    for line in (_EMBEDDED_DIR / "SHA256SUMS").read_text().splitlines():
        if line.strip():
            digest, fname = line.split()
            sums[fname.lstrip("*")] = digest
    return sums


@functools.cache
def known_files() -> dict[str, tuple[str, str]]:
    """SHA-256 of a raw IDX file -> (dataset, file name), for MNIST's and Fashion-MNIST's eight files."""
    known = {digest: ("MNIST", name) for name, digest in _embedded_sums().items()}
    return known | {digest: ("Fashion-MNIST", name) for digest, name in _FASHION_SHA256.items()}


def idx_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of the raw IDX file that `read_idx` read `tensor` from (its header rebuilt: the file is exactly
    header and data)."""
    header = bytes([0, 0, 0x08, tensor.dim()]) + struct.pack(f">{tensor.dim()}I", *tensor.shape)
    return hashlib.sha256(header + tensor.contiguous().numpy().tobytes()).hexdigest()


def _read_embedded(name: str) -> bytes:
    """Decompress one embedded IDX file and check it against ``SHA256SUMS``."""
    sums = _embedded_sums()
    raw = gzip.decompress((_EMBEDDED_DIR / f"{name}.gz").read_bytes())
    actual = hashlib.sha256(raw).hexdigest()
    if actual != sums.get(name):
        raise ValueError(
            f"embedded MNIST file {_EMBEDDED_DIR / name}.gz is corrupt: sha256 {actual}, "
            f"expected {sums.get(name)}. Reinstall nowt."
        )
    return raw


@functools.cache
def _embedded_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = (read_idx(_read_embedded(f), name=f) for f in _FILES[split])
    return images, labels


def _read_dir(
    root: str | os.PathLike[str], split: str, dataset: str, help_text: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each IDX file raw or gzipped; where both forms are there (torchvision's raw/ folder has both), they
    must hold the same data: images and labels could otherwise come from different sources. A file that is
    known (`known_files`) to be another dataset's or another split's is refused: MNIST and Fashion-MNIST have
    the same shapes and sizes, so a --data-dir of the other one (or test files copied as training files)
    would otherwise train and score without a word."""
    root = Path(root)
    tensors = []
    for name in _check_split(split):
        candidates = [root / name, root / f"{name}.gz"]
        found = [(p, read_idx(p)) for p in candidates if p.is_file()]
        if not found:
            raise FileNotFoundError(
                f"{dataset} file {name} not found: looked for {', '.join(map(str, candidates))}. {help_text}"
            )
        if len(found) == 2 and not (found[0][1].shape == found[1][1].shape
                                    and torch.equal(found[0][1], found[1][1])):
            raise ValueError(
                f"{dataset}: {found[0][0]} and {found[1][0]} hold different data; remove the one that is "
                f"not the file you mean (--download fetches and checks the .gz)"
            )
        known = known_files().get(idx_sha256(found[0][1]))
        if known is not None and known != (dataset, name):
            raise ValueError(f"{found[0][0]} is {known[0]}'s {known[1]}, not {dataset}'s {name}: point "
                             f"--data-dir at a folder of {dataset}'s own files. {help_text}")
        tensors.append(found[0][1])
    return _to_pair(tensors[0], tensors[1], f"{dataset} in {root}")


def load_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return MNIST ``(images, labels)``: float32 ``[N,1,28,28]`` in [0,1] and int64 ``[N]``.

    ``root=None`` uses the checksum-verified copy shipped in ``nowt/data/mnist`` (cached per process);
    otherwise the four standard IDX files (raw or ``.gz``; both forms of a file must agree) are read from
    ``root``.
    """
    _check_split(split)
    if root is None:
        return _to_pair(*_embedded_mnist(split), "embedded MNIST")
    return _read_dir(root, split, "MNIST", _MNIST_HELP)


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return Fashion-MNIST ``(images, labels)`` in the same format as :func:`load_mnist`.

    ``root=None`` reads ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
    """
    return _read_dir(FASHION_MNIST_DIR if root is None else root, split, "Fashion-MNIST", _FASHION_HELP)


def mnist_normalize(x: torch.Tensor) -> torch.Tensor:
    """Standardise [0,1] images with the MNIST training-set mean and std."""
    return (x - MNIST_MEAN) / MNIST_STD
