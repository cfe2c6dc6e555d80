import gzip
import hashlib
import shutil
import struct

import pytest
import torch

from nowt.data import datasets, load_fashion_mnist, load_mnist, mnist_normalize, read_idx

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array: torch.Tensor) -> bytes:
    header = bytes([0, 0, 0x08, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.to(torch.uint8).contiguous().numpy().tobytes()


def write_mnist_dir(path, n: int = 5, gz: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    images = torch.arange(n * 28 * 28).remainder(256).reshape(n, 28, 28)
    labels = torch.arange(n).remainder(10)
    for prefix in ("train", "t10k"):
        pixels = images if prefix == "train" else 255 - images  # other examples: no test set in training
        for name, arr in ((f"{prefix}-images-idx3-ubyte", pixels), (f"{prefix}-labels-idx1-ubyte", labels)):
            data = idx_bytes(arr)
            if gz:
                (path / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (path / name).write_bytes(data)


@pytest.mark.parametrize(("split", "counts"), [("train", MNIST_TRAIN_COUNTS), ("test", MNIST_TEST_COUNTS)])
def test_embedded_mnist(split, counts):
    images, labels = load_mnist(split)
    n = sum(counts)
    assert images.shape == (n, 1, 28, 28) and images.dtype == torch.float32
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert torch.bincount(labels, minlength=10).tolist() == counts
    if split == "train":
        assert abs(images.mean().item() - datasets.MNIST_MEAN) < 1e-3
        assert abs(images.std().item() - datasets.MNIST_STD) < 1e-3
        normed = mnist_normalize(images[:20000])
        assert abs(normed.mean().item()) < 2e-2 and abs(normed.std().item() - 1) < 2e-2


def test_embedded_mnist_is_cached_and_not_aliased():
    a, _ = load_mnist("test")
    a.zero_()
    b, _ = load_mnist("test")
    assert b.max() == 1.0


def test_embedded_checksums_match_files():
    lines = (datasets._EMBEDDED_DIR / "SHA256SUMS").read_text().splitlines()
    sums = {name: digest for digest, name in map(str.split, lines)}
    assert sorted(sums) == sorted(f for pair in datasets._FILES.values() for f in pair)
    for name, digest in sums.items():
        raw = gzip.decompress((datasets._EMBEDDED_DIR / f"{name}.gz").read_bytes())
        assert hashlib.sha256(raw).hexdigest() == digest
    assert (datasets._EMBEDDED_DIR / "LICENSE.txt").is_file()


def test_embedded_checksum_mismatch_raises(tmp_path, monkeypatch):
    name = "t10k-labels-idx1-ubyte"
    shutil.copy(datasets._EMBEDDED_DIR / "SHA256SUMS", tmp_path)
    raw = bytearray(gzip.decompress((datasets._EMBEDDED_DIR / f"{name}.gz").read_bytes()))
    raw[-1] ^= 1
    (tmp_path / f"{name}.gz").write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr(datasets, "_EMBEDDED_DIR", tmp_path)
    with pytest.raises(ValueError, match="corrupt"):
        datasets._read_embedded(name)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    data = idx_bytes(arr)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    for source in (path, str(path), path.read_bytes()):
        out = read_idx(source)
        assert out.dtype == torch.uint8 and torch.equal(out, arr)


def test_read_idx_bad_magic_names_file(tmp_path):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(ValueError, match="bad.idx"):
        read_idx(path)
    with pytest.raises(ValueError, match="type code"):
        read_idx(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00")


def test_read_idx_size_mismatch(tmp_path):
    path = tmp_path / "short.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(torch.zeros(4, 2))[:-1]))
    with pytest.raises(ValueError, match="short.idx.gz"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_dir(tmp_path, gz):
    write_mnist_dir(tmp_path, gz=gz)
    images, labels = load_mnist("test", root=tmp_path)
    assert images.shape == (5, 1, 28, 28) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3, 4] and labels.dtype == torch.int64
    assert torch.isclose(images.max(), torch.tensor(1.0))


def test_missing_dir_raises(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere") as info:
        load_mnist("train", root=missing)
    assert "ossci-datasets" in str(info.value)
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", root=missing)


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        load_mnist("val")


@pytest.mark.skipif(not datasets.FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert torch.bincount(labels, minlength=10).tolist() == [1000] * 10


def test_a_raw_and_a_gz_file_that_differ_are_refused_naming_both(tmp_path):
    """The raw file used to win over the .gz, per file: after --download fetched (and checked) the .gz, an
    old raw file beside it was read instead, and images and labels could come from different sources."""
    write_mnist_dir(tmp_path, n=5)
    write_mnist_dir(tmp_path, n=5, gz=True)  # the same data in both forms (torchvision's raw/ folder)
    assert load_mnist("test", root=tmp_path)[1].tolist() == [0, 1, 2, 3, 4]
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(torch.tensor([4, 3, 2, 1, 0]))))
    with pytest.raises(ValueError, match=rf"{tmp_path / 't10k-labels-idx1-ubyte'} and {labels} hold "
                                         r"different data; remove the one"):
        load_mnist("test", root=tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    assert load_mnist("test", root=tmp_path)[1].tolist() == [4, 3, 2, 1, 0]
    assert len(load_fashion_mnist("train", root=tmp_path)[1]) == 5  # the other split: still both agree


def test_another_datasets_or_another_splits_files_are_refused(tmp_path):
    """MNIST and Fashion-MNIST have the same shapes, sizes and classes: `--dataset fashion-mnist` with a
    --data-dir of MNIST (or the reverse), or a folder whose training files are copies of its test files,
    trained and scored without a word (on the wrong data, or on the test set). Files known by their SHA-256
    are now refused where they are not the file they are named as."""
    embedded = datasets._EMBEDDED_DIR
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for f in embedded.glob("*.gz"):
        shutil.copy(f, mnist / f.name)
    assert len(load_mnist("test", root=mnist)[1]) == 10000  # MNIST's own files, as MNIST: read
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.gz is MNIST's t10k-images-idx3-ubyte, not "
                                         r"Fashion-MNIST's t10k-images-idx3-ubyte"):
        load_fashion_mnist("test", root=mnist)
    leak = tmp_path / "leak"
    leak.mkdir()
    for kind in ("images-idx3", "labels-idx1"):
        shutil.copy(embedded / f"t10k-{kind}-ubyte.gz", leak / f"train-{kind}-ubyte.gz")
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is MNIST's t10k-images-idx3-ubyte, not "
                                         r"MNIST's train-images-idx3-ubyte"):
        load_mnist("train", root=leak)
    if datasets.FASHION_MNIST_DIR.is_dir():  # the Debian package's files as MNIST
        with pytest.raises(ValueError, match="is Fashion-MNIST's train-images-idx3-ubyte, not MNIST's"):
            load_mnist("train", root=datasets.FASHION_MNIST_DIR)
        assert len(load_fashion_mnist("train")[1]) == 60000
