import gzip
import hashlib
import shutil
import struct
import warnings

import numpy as np
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


def test_uint8_labels_are_sampled_as_long_labels_are():
    """check_data admits uint8 labels, but the class-balanced sample indexed with them (read as a mask): the
    probe batch of a test set of over 256 examples, --validation and --train-size crashed in torch with an
    IndexError about a mask's shape."""
    from nowt.data.registry import holdout, probe_batch, train_subset

    x, y = torch.randn(600, 3), torch.arange(600) % 3
    small = y.to(torch.uint8)
    assert torch.equal(probe_batch((x, small))[0], probe_batch((x, y))[0])
    assert torch.equal(holdout((x, small), 30)[1][0], holdout((x, y), 30)[1][0])
    assert torch.equal(train_subset((x, small), 40)[0], train_subset((x, y), 40)[0])


def test_a_held_out_part_that_takes_every_example_of_a_class_says_so():
    """The held-out part is class-balanced: a class smaller than the others' share went into it whole, and
    the model trained without it, without a word (--validation 30 of classes of 500, 500 and 8 examples)."""
    from nowt.data.registry import holdout

    y = torch.tensor([0] * 500 + [1] * 500 + [2] * 8)
    x = torch.arange(len(y), dtype=torch.float32).unsqueeze(1)
    with pytest.warns(UserWarning, match=r"--validation 30 holds out every training example of class\(es\) "
                                         r"2: the model never trains on them \(hold out at most 23, or"):
        (_, kept), (_, held) = holdout((x, y), 30, "--validation")
    assert torch.bincount(kept, minlength=3).tolist() == [489, 489, 0]
    assert torch.bincount(held).tolist() == [11, 11, 8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.bincount(holdout((x, y), 23)[0][1]).tolist() == [492, 492, 1]  # at most 23: said right


def test_the_number_of_classes_of_tensors_and_a_dataset_mixed_is_read_or_refused_in_a_line(tmp_path):
    """fit((x, y), a TensorDataset) failed in torch.cat ('expected Tensor as element 1 in argument 0, but got
    tuple'), naming neither part."""
    from torch.utils.data import TensorDataset

    from nowt.data import TransformDataset
    from nowt.train import TrainConfig, fit

    x, y = torch.randn(40, 4), torch.arange(40) % 3
    with pytest.raises(ValueError, match=r"number of classes from the test data \(a TensorDataset\): give "
                                         r"it a `classes`"):
        fit(TrainConfig(hidden=(4,), epochs=1), (x, y), TensorDataset(x, y), progress=False)
    from nowt.data.registry import num_classes

    assert num_classes((x, y), (x[:4], y[:4] + 2)) == 5
    assert num_classes((x, y), TransformDataset(x, y, abs)) == 3
    assert num_classes(TransformDataset(x, y, abs, 7), (x, y)) == 7


def _png16(path, gray: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(gray.astype(np.uint16)).save(path)  # Pillow's mode I;16


def test_16_bit_grayscale_images_are_scaled_not_clipped_to_white(tmp_path):
    """convert("RGB") (torchvision's loader too) clips every 16-bit value above 255 to white: a 16-bit
    grayscale PNG, TIFF or PGM of mean 0.5 trained as an image of mean 0.98. Float images (of no fixed
    range) were read as if 0..255: [0, 1] pixels as all but black."""
    from PIL import Image

    from nowt.data import ImageFolder

    gray = np.linspace(0, 65535, 64).reshape(8, 8).round()
    (tmp_path / "a").mkdir()
    _png16(tmp_path / "a" / "p.png", gray)
    _png16(tmp_path / "a" / "t.tif", gray)
    (tmp_path / "a" / "g.pgm").write_bytes(b"P5\n8 8\n65535\n" + gray.astype(">u2").tobytes())  # Pillow's I
    Image.fromarray(gray.astype(np.int32) // 257).save(tmp_path / "a" / "i.tif")  # 32-bit, values 0..255
    folder = ImageFolder(tmp_path)
    for k, (path, _) in enumerate(folder.samples):
        x = folder[k][0]
        assert x.shape == (3, 8, 8) and torch.equal(x[0], x[2]), path.name
        expected = torch.from_numpy(gray / 65535 if path.suffix != ".tif" or path.stem == "t"
                                    else (gray // 257) / 255).float()
        assert torch.allclose(x[1], expected, atol=1e-6), path.name
    Image.fromarray((gray / 65535).astype(np.float32)).save(tmp_path / "a" / "f.tif")  # mode F, [0, 1]
    folder = ImageFolder(tmp_path)
    with pytest.raises(ValueError, match=r"a/f.tif .*F-mode pixels span \[0.0, 1.0\], not the 8-bit"):
        folder[[p.name for p, _ in folder.samples].index("f.tif")]


def test_a_val_folder_of_unsorted_images_or_linked_to_train_is_named_as_such(tmp_path):
    """ImageNet's validation images come in one folder: val/ without class folders was refused as 'missing'
    every one of train's classes, listed whole (1000 names), without the cause. `ln -s train val` trained and
    scored on the same images."""
    from PIL import Image

    from nowt.data import load_dataset

    for i in range(30):
        (tmp_path / "train" / f"n{i:03d}").mkdir(parents=True)
        Image.new("RGB", (4, 4), (i, 0, 0)).save(tmp_path / "train" / f"n{i:03d}" / "x.JPEG")
    (tmp_path / "val").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(ValueError, match=r"val holds images but no class folders .*sort them into class "
                                         r"folders.*\(n000, n001, .* n009 and 20 more\)$"):
        load_dataset("imagenet", root=tmp_path)
    (tmp_path / "val" / "n000").mkdir()
    with pytest.raises(ValueError, match=r"missing n001, .*, n010 and 19 more\): labels would mean"):
        load_dataset("imagenet", root=tmp_path)
    shutil.rmtree(tmp_path / "val")
    (tmp_path / "val").symlink_to(tmp_path / "train", target_is_directory=True)
    with pytest.raises(ValueError, match=r"val is .*train \(a link to it\): the images trained on would be"):
        load_dataset("imagenet", root=tmp_path)
    (tmp_path / "val").unlink()
    shutil.copytree(tmp_path / "train", tmp_path / "val")  # a copy, not a link: the same images scored
    with pytest.raises(ValueError, match=r"val is a copy of .*train \(each of 30 val images drawn at random "
                                         r"is also in train/, same name and bytes\): the images trained on"):
        load_dataset("imagenet", root=tmp_path)
    Image.new("RGB", (4, 4), (0, 9, 0)).save(tmp_path / "val" / "n007" / "x.JPEG")  # one image of its own
    assert len(load_dataset("imagenet", root=tmp_path).test) == 30


def test_download_extracts_cifar_again_where_a_batch_of_it_is_lost(tmp_path, monkeypatch):
    """--download looked for test_batch alone: with another batch of the extracted folder deleted, it
    extracted nothing, and the load failed saying to pass --download."""
    import tarfile

    from test_datasets import write_cifar

    from nowt.data import downloads, load_dataset

    write_cifar(tmp_path / "src", n=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(downloads.SOURCES, "cifar10", [(tmp_path.as_uri() + "/", archive.name, md5)])
    assert len(load_dataset("cifar10", root=tmp_path / "cache", download=True).train[1]) == 10
    (tmp_path / "cache" / "cifar-10-batches-py" / "data_batch_3").unlink()
    assert len(load_dataset("cifar10", root=tmp_path / "cache", download=True).train[1]) == 10


def test_a_train_size_beyond_a_text_corpus_says_so(tmp_path):
    """Images warn when --train-size is more than the training set (config.json records it); a text corpus
    trained on all its windows without a word."""
    from nowt.data import load_dataset

    (tmp_path / "a.txt").write_bytes(b"hello world " * 200)
    with pytest.warns(UserWarning, match=r"--train-size 1000 is more than the 134 training windows of "
                                         r"fortunes"):
        assert len(load_dataset("fortunes", root=tmp_path, context=16, train_size=1000).train[0]) == 134
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset("fortunes", root=tmp_path, context=16, train_size=134).train[0]) == 134


def test_a_train_size_below_the_number_of_classes_names_the_classes_left_out():
    from nowt.data.registry import train_subset
    labels = torch.arange(10).repeat(5)
    x = torch.zeros(len(labels), 1, 2, 2)
    with pytest.warns(UserWarning, match=r"--train-size 7 is fewer than the 10 classes: the model never "
                                         r"trains on class\(es\) \d, \d, \d$") as caught:
        kept = train_subset((x, labels), 7)
    assert len(kept[1]) == 7 and len(kept[1].unique()) == 7
    named = str(caught[0].message).rsplit("class(es) ", 1)[1].split(", ")
    assert sorted(map(int, named)) == sorted(set(range(10)) - set(kept[1].tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(train_subset((x, labels), 10)[1].unique()) == 10  # one of each: nothing to say
