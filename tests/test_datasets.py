"""Dataset loaders on fixtures written here: CIFAR pickles, an image folder, downloads from file:// URLs."""

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
from test_data import write_mnist_dir

from nowt.data import (
    ImageFolder,
    TransformDataset,
    download,
    fetch,
    load_cifar10,
    load_dataset,
    load_image_folder,
    read_cifar_batch,
    synthetic,
)
from nowt.data import downloads as download_mod
from nowt.data.transforms import RandomCrop, RandomHorizontalFlip


def cifar_batch_bytes(n: int, seed: int) -> tuple[bytes, np.ndarray, list[int]]:
    """A batch in CIFAR-10's format: a pickled dict with bytes keys, data uint8 [n, 3072] (R, G, B planes)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    batch = {b"batch_label": b"fixture", b"labels": labels, b"data": data,
             b"filenames": [f"{i}.png".encode() for i in range(n)]}
    return pickle.dumps(batch, protocol=2), data, labels


def write_cifar(root, n: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        raw, data, labels = cifar_batch_bytes(n, seed=i)
        (folder / name).write_bytes(raw)
        written[name] = (data, labels)
    return written


def test_cifar_reader_lays_out_channels_and_concatenates_batches(tmp_path):
    written = write_cifar(tmp_path)
    images, labels = load_cifar10("train", tmp_path)
    assert images.shape == (20, 3, 32, 32) and images.dtype == torch.float32
    data, first_labels = written["data_batch_1"]
    # Pixel (row 2, col 5) of the green plane is byte 1024 + 2 * 32 + 5 of the row.
    assert images[1, 1, 2, 5] == data[1, 1024 + 2 * 32 + 5] / 255.0
    assert labels[:4].tolist() == first_labels
    assert labels[16:].tolist() == written["data_batch_5"][1]
    test_images, test_labels = load_cifar10("test", tmp_path / "cifar-10-batches-py")
    expected = torch.from_numpy(written["test_batch"][0]).float().view(4, 3, 32, 32)
    assert torch.equal(test_images * 255, expected) and test_labels.tolist() == written["test_batch"][1]


def test_cifar_reader_refuses_code_in_pickles_and_reports_missing_files(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="refusing to load"):
        read_cifar_batch(tmp_path / "evil")
    with pytest.raises(FileNotFoundError, match=r"data_batch_1 not found in .*--download"):
        load_cifar10("train", tmp_path)



def test_cifar_pixels_that_are_not_bytes_are_refused(tmp_path):
    """The reader cast b"data" to uint8: a batch whose pixels were already scaled to [0, 1] (floats) became
    all zeros, and values above 255 wrapped, and training went on. Other integer arrays of bytes still
    read."""
    rng = np.random.default_rng(0)
    for name, data, says in (("scaled", rng.random((4, 3072)).astype(np.float32), "got float32"),
                             ("wide", rng.integers(0, 1024, (4, 3072)).astype(np.int16), "got int16 in")):
        (tmp_path / name).write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3, 4]}, protocol=2))
        with pytest.raises(ValueError, match=f"pixels must be bytes 0..255 .*{says}"):
            read_cifar_batch(tmp_path / name)
    data = rng.integers(0, 256, (4, 3072))  # int64 bytes: read as they are
    (tmp_path / "int64").write_bytes(pickle.dumps({b"data": data, b"labels": [1, 2, 3, 4]}, protocol=2))
    assert torch.equal(read_cifar_batch(tmp_path / "int64")[0].flatten(1).long(), torch.from_numpy(data))
    (tmp_path / "float-labels").write_bytes(pickle.dumps({b"data": data.astype(np.uint8),
                                                          b"labels": [1.5, 2.0, 3.0, 4.0]}, protocol=2))
    with pytest.raises(ValueError, match="labels must be integers, got float64"):
        read_cifar_batch(tmp_path / "float-labels")

def _serve(monkeypatch, payload: bytes, fail_after: int | None = None):
    """Makes urlopen answer with `payload` (raising KeyboardInterrupt after `fail_after` bytes: a kill)."""
    class Response(io.BytesIO):
        def read(self, size=-1):
            if fail_after is not None and self.tell() >= fail_after:
                raise KeyboardInterrupt
            return super().read(min(size, fail_after or size) if size > 0 else size)

    monkeypatch.setattr(download_mod.urllib.request, "urlopen", lambda url, timeout=None: Response(payload))


def test_download_is_checksummed_and_atomic(tmp_path, monkeypatch):
    payload = os.urandom(5000)
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "cache" / "file.gz"
    _serve(monkeypatch, payload, fail_after=1000)
    with pytest.raises(KeyboardInterrupt):
        download("https://example.invalid/file.gz", dest, md5)
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # no half file, no temp file
    _serve(monkeypatch, payload[:-1] + b"x")
    with pytest.raises(ValueError, match="corrupt"):
        download("https://example.invalid/file.gz", dest, md5)
    assert list(dest.parent.iterdir()) == []
    _serve(monkeypatch, payload)
    assert download("https://example.invalid/file.gz", dest, md5) == dest
    assert dest.read_bytes() == payload and list(dest.parent.iterdir()) == [dest]


def test_fetch_cifar_from_a_file_url_then_load(tmp_path, monkeypatch):
    src = tmp_path / "src"
    written = write_cifar(src, n=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(download_mod.SOURCES, "cifar10", [(tmp_path.as_uri() + "/", archive.name, md5)])
    root = fetch("cifar10", tmp_path / "cache")
    images, labels = load_cifar10("test", root)
    assert labels.tolist() == written["test_batch"][1] and images.shape == (2, 3, 32, 32)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-py", archive.name]
    monkeypatch.setitem(download_mod.SOURCES, "cifar10", [(tmp_path.as_uri() + "/", archive.name, "0" * 32)])
    with pytest.raises(ValueError, match="corrupt"):
        fetch("cifar10", tmp_path / "cache2")
    with pytest.raises(ValueError, match="no download for 'svhn'"):
        fetch("svhn")


def test_load_dataset_mnist_gz_fixture_cifar_augmented_and_synthetic(tmp_path):
    write_mnist_dir(tmp_path / "mnist", n=6, gz=True)
    data = load_dataset("mnist", root=tmp_path / "mnist", train_size=4)
    assert data.train[0].shape == (4, 1, 28, 28) and data.num_classes == 6 and data.input_shape == (1, 28, 28)
    assert abs(float(data.test[0].mean()) - float(((torch.arange(784) % 256) / 255.0 - 0.1307).mean()
                                                 / 0.3081)) < 0.2
    write_cifar(tmp_path / "cifar")
    data = load_dataset("cifar10", root=tmp_path / "cifar", augment=True)
    assert isinstance(data.train, TransformDataset) and data.input_shape == (3, 32, 32)
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and int(y) == int(data.train.y[0])
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert torch.equal(a.train[0], b.train[0]) and a.num_classes == 4
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("svhn")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=tmp_path / "nowhere")


def test_image_folder_reads_classes_in_sorted_order(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for c, color in (("cat", (255, 0, 0)), ("ant", (0, 0, 255))):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (40, 30), color).save(tmp_path / split / c / "a.png")
    (tmp_path / "val" / "ant" / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path / "val")
    assert folder.classes == ["ant", "cat"] and len(folder) == 2
    x, label = folder[1]
    assert label == 1 and x.shape == (3, 30, 40) and x[0].min() == 1.0 and x[2].max() == 0.0
    val = load_image_folder(tmp_path, "val", size=16)
    x, label = val[0]
    assert x.shape == (3, 16, 16) and label == 0
    assert load_image_folder(tmp_path, "train", size=16)[0][0].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="train/<class>"):
        ImageFolder(tmp_path / "missing")


def test_tensor_crop_and_flip():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)
    crops = {tuple(RandomCrop(4, padding=1)(x).flatten().tolist()) for _ in range(60)}
    padded = torch.nn.functional.pad(x, [1, 1, 1, 1])
    windows = {tuple(padded[:, i:i + 4, j:j + 4].flatten().tolist()) for i in range(3) for j in range(3)}
    assert crops == windows  # every one of the 9 windows, and nothing else
    flips = {tuple(RandomHorizontalFlip()(x)[0, 0].tolist()) for _ in range(40)}
    assert flips == {(0.0, 1.0, 2.0, 3.0), (3.0, 2.0, 1.0, 0.0)}


def test_synthetic_is_seeded_and_checks_sizes():
    (xa, ya), _ = synthetic(seed=1)
    (xb, yb), _ = synthetic(seed=1)
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (500, 20)
    with pytest.raises(ValueError, match="n_train"):
        synthetic(n_train=0)


def test_gz_idx_fixture_round_trip(tmp_path):
    write_mnist_dir(tmp_path, n=3, gz=True)
    raw = gzip.decompress((tmp_path / "t10k-labels-idx1-ubyte.gz").read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x01"
    assert load_dataset("mnist", root=tmp_path).test[1].tolist() == [0, 1, 2]


def test_augment_is_refused_where_nowt_has_none():
    from nowt.data import load_dataset

    with pytest.raises(ValueError, match="no augmentation for 'synthetic'"):
        load_dataset("synthetic", augment=True)


def write_image_folder(root, classes: dict[str, list[str]], size=(12, 10)):
    from PIL import Image

    for split, names in classes.items():
        for c in names:
            (root / split / c).mkdir(parents=True)
            colour = (len(c) * 40, 0 if split == "train" else 1, 0)  # val/ no copy of train/: that is refused
            Image.new("RGB", size, colour).save(root / split / c / "x.png")


@pytest.mark.parametrize("val, named", [(["a", "c"], "missing b"), (["a", "b", "c"], "extra c")])
def test_image_folders_with_other_classes_in_val_are_refused(tmp_path, val, named):
    # val/{a,c} used to be scored against train's {a,b,c} labels (c as b); val/{a,b,c}: an IndexError
    write_image_folder(tmp_path, {"train": ["a", "b"] if "extra" in named else ["a", "b", "c"], "val": val})
    with pytest.raises(ValueError, match=f"other classes.*{named}.*same class folders"):
        load_dataset("imagenet", root=tmp_path)
    (tmp_path / "val" / ("b" if "missing" in named else "c")).mkdir(exist_ok=True)
    if "extra" in named:
        (tmp_path / "train" / "c").mkdir()
    with pytest.raises(FileNotFoundError, match="no readable image in the class folder"):
        load_dataset("imagenet", root=tmp_path)  # an empty class folder agrees, but teaches nothing
    for split in ("train", "val"):
        shutil.copy(tmp_path / split / "a" / "x.png", tmp_path / split / ("b" if "missing" in named else "c"))
    data = load_dataset("imagenet", root=tmp_path)
    assert data.num_classes == 3 and data.test.classes == data.train.classes == ["a", "b", "c"]


def test_unreadable_images_are_skipped_counted_and_named(tmp_path):
    write_image_folder(tmp_path, {"train": ["a", "b"], "val": ["a", "b"]})
    (tmp_path / "train" / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "b" / "notes.jpg").write_text("not an image")
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable file\(s\) of 4: a/empty.jpg \(empty file\); "
                                         r"b/notes.jpg \(not a readable image"):
        data = load_dataset("imagenet", root=tmp_path)
    assert len(data.train) == 2 and [data.train[i][1] for i in range(2)] == [0, 1]
    assert data.train[0][0].shape == (3, 224, 224)
    # a file that goes bad after the check: a one-line error naming it, not PIL's traceback
    (tmp_path / "train" / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(ValueError, match=r"cannot decode image .*a/x.png .*remove or replace"):
        data.train[0]
    (tmp_path / "train" / "b" / "x.png").write_bytes(b"")
    (tmp_path / "train" / "a" / "x.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no images in .*only 3 unreadable file\(s\): a/empty.jpg"):
        load_dataset("imagenet", root=tmp_path)


def test_train_size_takes_a_class_balanced_random_sample_of_any_dataset(tmp_path):
    from PIL import Image

    from nowt.data.registry import balanced_sample

    for split, per_class in (("train", 10), ("val", 1)):  # 3 classes of 10: files in class order
        for c in "abc":
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (4, 4), (i, split == "val", 0)).save(tmp_path / split / c / f"{i}.png")
    data = load_dataset("imagenet", root=tmp_path, train_size=10)
    labels = [data.train.dataset.samples[i][1] for i in data.train.indices]
    assert sorted(labels.count(c) for c in range(3)) == [3, 3, 4] and data.num_classes == 3  # first 10: all 0
    again = load_dataset("imagenet", root=tmp_path, train_size=10).train.indices
    assert again == data.train.indices != list(range(10))  # seeded: the same files every run, not the first
    with pytest.warns(UserWarning, match="--train-size 99 is more than the 30 training examples"):
        assert len(load_dataset("imagenet", root=tmp_path, train_size=99).train) == 30
    # one rule for every dataset: MNIST's tensors too, with the classes as equal as their sizes allow
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 45)
    picked = balanced_sample(labels, 30)
    assert picked.tolist() == sorted(set(picked.tolist())) and len(picked) == 30
    counts = torch.bincount(labels[picked]).tolist()
    assert counts[1] == 5 and sorted(counts[::2]) == [12, 13]  # class 1 whole, the others alike
    assert not torch.equal(picked, balanced_sample(labels, 30, seed=1))
    mnist = load_dataset("mnist", train_size=100)
    counts = torch.bincount(mnist.train[1], minlength=10)
    assert len(mnist.train[0]) == 100 and counts.tolist() == [10] * 10
    from nowt.train.config import FIELDS

    assert "class-balanced random sample" in FIELDS["train_size"].metadata["help"]  # --train-size says so


@pytest.mark.parametrize("torchvision", [True, False])
@pytest.mark.parametrize("size, padding", [(64, 8), (20, 3), (32, 4)])
def test_cifar_augmentation_crops_to_the_resized_size(tmp_path, monkeypatch, torchvision, size, padding):
    # --augment --image-size 64 used to train on 32 x 32 crops of the 64 x 64 images while testing on 64 x 64
    from nowt.data import transforms

    if not torchvision:
        monkeypatch.setattr(transforms, "T", None)
    elif transforms.T is None:
        pytest.skip("torchvision not installed")
    write_cifar(tmp_path)
    data = load_dataset("cifar10", root=tmp_path, augment=True, image_size=size)
    assert data.input_shape == (3, size, size) == tuple(data.test[0].shape[1:])
    assert all(data.train[i][0].shape == data.input_shape for i in range(len(data.train)))
    crop = transforms.cifar_augmentation(size).transforms[0]
    assert (crop.size, crop.padding) in ((size, padding), ((size, size), padding))  # ours, torchvision's


def test_image_folder_follows_symlinks_refuses_empty_classes_and_has_hidden_classes_as_torchvision(tmp_path):
    """torchvision's ImageFolder walks symlinked folders (os.walk followlinks), lists a folder's own files
    before its subfolders', refuses a class without images and makes every folder, hidden ones too, a
    class. Ours used to drop images behind symlinked folders and keep an empty class (or a hidden folder)
    silently."""
    from PIL import Image

    def image(path, red):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4), (red, 0, 0)).save(path)

    root = tmp_path / "train"
    image(root / "a" / "z.png", 1)
    image(root / "a" / "sub" / "y.png", 2)
    image(tmp_path / "elsewhere" / "x.png", 3)
    image(tmp_path / "elsewhere" / "w.PNG", 4)
    (root / "a" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "b").symlink_to(tmp_path / "elsewhere", target_is_directory=True)  # a symlinked class folder
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("no image")
    with pytest.raises(FileNotFoundError, match=r"no readable image in the class folder\(s\) c; "):
        ImageFolder(root)
    image(root / "c" / "v.png", 5)
    (root / ".ipynb_checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\(s\) .ipynb_checkpoints \(a hidden folder is a class"):
        ImageFolder(root)
    image(root / ".ipynb_checkpoints" / "u.png", 6)
    folder = ImageFolder(root)
    assert folder.classes == [".ipynb_checkpoints", "a", "b", "c"]
    assert [(str(p.relative_to(root)), y) for p, y in folder.samples] == [
        (".ipynb_checkpoints/u.png", 0), ("a/z.png", 1), ("a/linked/w.PNG", 1), ("a/linked/x.png", 1),
        ("a/sub/y.png", 1), ("b/w.PNG", 2), ("b/x.png", 2), ("c/v.png", 3)]
    assert [round(float(folder[i][0][0, 0, 0]) * 255) for i in range(len(folder))] == [6, 1, 4, 3, 2, 4, 3, 5]
    (root / "a" / "sub" / "loop").symlink_to(root / "a", target_is_directory=True)
    with pytest.raises(ValueError, match=r"a/sub/loop links back to .*a, a folder it is in"):
        ImageFolder(root)


def test_the_probe_batch_is_a_fixed_class_balanced_sample_of_the_test_set(tmp_path, monkeypatch):
    """Update angles and the collapse check are measured on a probe batch; it was the first 256 test
    examples, which in an image folder (class order: ImageNet val's first 256 are of 6 classes) or any
    class-sorted test set leave most classes out."""
    from PIL import Image

    import nowt.train.loop as loop
    from nowt.data.registry import balanced_sample, first_examples, probe_batch
    from nowt.train import TrainConfig, fit

    x = torch.randn(1000, 6)
    y = torch.arange(1000) // 100  # sorted by class: the first 256 are of classes 0, 1, 2
    probe_x, probe_y = probe_batch((x, y))
    assert sorted(torch.bincount(probe_y).tolist()) == [25] * 4 + [26] * 6
    rows = balanced_sample(y, 256, seed=0)
    assert torch.equal(probe_x, x[rows]) and torch.equal(probe_y, y[rows])
    assert torch.equal(probe_batch((x, y))[0], probe_x)  # fixed
    seen = []
    monkeypatch.setattr(loop, "output_collapsed", lambda model, inputs: seen.append(inputs) or False)
    fit(TrainConfig(hidden=(4,), epochs=1, batch_size=100), (x, y), (x, y), progress=False)
    assert torch.equal(seen[0], probe_x)
    for c in "abc":  # an image folder: class order
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.new("RGB", (4, 4), (ord(c), i, 0)).save(tmp_path / c / f"{i}.png")
    folder = ImageFolder(tmp_path)
    xs, ys = probe_batch(folder, 6)
    assert ys.tolist() == sorted(ys.tolist()) and torch.bincount(ys).tolist() == [2, 2, 2]
    assert torch.equal(first_examples(folder, 6)[1], torch.tensor([0, 0, 0, 0, 1, 1]))
    windows = torch.randint(0, 256, (300, 8))  # text: a label per position, no class per example
    assert torch.equal(probe_batch((windows, windows))[0], windows[:256])


def test_a_training_set_holding_the_test_set_is_refused(tmp_path):
    """A --data-dir whose test batch had been copied in place of a training batch (or an IDX folder whose
    train files are its t10k files) trained on the test set and reported its error as the test error."""
    write_cifar(tmp_path, n=50)
    assert len(load_dataset("cifar10", root=tmp_path).train[1]) == 250  # the fixture's own batches: read
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copy(folder / "test_batch", folder / "data_batch_5")
    with pytest.raises(ValueError, match=r"cifar10: the training set holds the test set .*copied in place"):
        load_dataset("cifar10", root=tmp_path)


def test_a_cifar_training_batch_copied_over_another_is_refused(tmp_path):
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    shutil.copy(folder / "data_batch_1", folder / "data_batch_4")  # batch 1 trained twice, batch 4 never
    with pytest.raises(ValueError, match=r"files data_batch_1 and data_batch_4 in .* hold the same images"):
        load_cifar10("train", tmp_path)


def test_images_beside_the_class_folders_are_said_to_be_unused(tmp_path):
    from PIL import Image

    write_image_folder(tmp_path, {"train": ["a", "b"], "val": ["a", "b"]})
    for name in ("stray1.jpg", "stray2.png"):
        Image.new("RGB", (4, 4)).save(tmp_path / "train" / name)
    with pytest.warns(UserWarning, match=r"train: 2 image\(s\) lie beside the class folders, in no class, "
                                         r"and are not used: stray1.jpg, stray2.png"):
        data = load_dataset("imagenet", root=tmp_path)
    assert len(data.train) == 2


def test_class_folders_that_differ_only_in_unicode_normalization_are_named_as_such(tmp_path):
    import unicodedata

    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    write_image_folder(tmp_path, {"train": [nfc, "tea"], "val": [nfd, "tea"]})
    if len({p.name for p in (tmp_path / "val").iterdir()} | {nfc}) == 2:
        pytest.skip("this file system normalizes names (both spellings are one folder)")
    with pytest.raises(ValueError, match=r"café: the same name\(s\) in another Unicode normalization"):
        load_dataset("imagenet", root=tmp_path)
