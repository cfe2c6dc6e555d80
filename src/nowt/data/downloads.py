"""Downloads into a cache directory, checksummed and atomic: a file is streamed to a temporary name beside its
destination, its MD5 checked, fsynced, then renamed into place. A killed download leaves only a temporary
file that no loader ever opens; a corrupt one is deleted and reported.

    root = nowt.data.fetch("cifar10")          # ~/.cache/nowt/cifar10/cifar-10-batches-py/...
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"

#: dataset -> [(url, file name, md5 of the file as published)]; MD5 because that is what the sources publish.
SOURCES: dict[str, list[tuple[str, str, str]]] = {
    "mnist": [
        (_MNIST_URL, "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        (_MNIST_URL, "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        (_MNIST_URL, "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        (_MNIST_URL, "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "fashion-mnist": [
        (_FASHION_URL, "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        (_FASHION_URL, "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        (_FASHION_URL, "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        (_FASHION_URL, "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
    "cifar10": [(_CIFAR10_URL, "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")],
}
_CHUNK = 1 << 20
_CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def cache_dir() -> Path:
    """`$NOWT_DATA`, else `$XDG_CACHE_HOME/nowt`, else `~/.cache/nowt`."""
    if "NOWT_DATA" in os.environ:
        return Path(os.environ["NOWT_DATA"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nowt"


def md5_file(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, md5: str) -> Path:
    """Downloads `url` to `dest` unless a file with that MD5 is already there; returns `dest`."""
    dest = Path(dest)
    if dest.is_file() and md5_file(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as response:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:  # URLError, timeouts, refused connections: one line, not urllib's traceback
            reason = getattr(e, "reason", None) or e
            raise ConnectionError(f"cannot download {url}: {reason}; check the network, or fetch the file "
                                  f"yourself and pass --data-dir (expected at {dest})") from None
        if h.hexdigest() != md5:
            raise ValueError(f"download of {url} is corrupt: md5 {h.hexdigest()}, expected {md5}; try again")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def extract_tar(archive: Path, folder: str, dest: Path) -> None:
    """Extracts the top-level `folder` of `archive` to `dest`, through a temporary directory renamed into
    place: `dest` appears whole or not at all."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}."))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")  # "data" refuses absolute paths, links out and devices
        if not (tmp / folder).is_dir():
            raise ValueError(f"{archive} has no top-level folder {folder!r}")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp / folder, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch(dataset: str, dest: str | os.PathLike | None = None) -> Path:
    """Downloads `dataset` ("mnist", "fashion-mnist", "cifar10") into `dest` (default: `cache_dir()/dataset`)
    and returns that directory, ready to pass as the dataset loader's `root`."""
    if dataset not in SOURCES:
        raise ValueError(f"no download for {dataset!r}; downloadable: {', '.join(SOURCES)}")
    target = Path(dest) if dest is not None else cache_dir() / dataset
    for base, name, md5 in SOURCES[dataset]:
        path = download(base + name, target / name, md5)
        if name.endswith(".tar.gz") and not all((target / "cifar-10-batches-py" / f).is_file()
                                                 for f in _CIFAR10_FILES):  # all six: one lost, extract again
            extract_tar(path, "cifar-10-batches-py", target / "cifar-10-batches-py")
    return target
