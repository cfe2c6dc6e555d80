"""`load_dataset(name)`: every dataset nowt trains on, as in-memory tensors (fast batching) or, for image
folders and augmented data, a `torch.utils.data.Dataset` for a DataLoader."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset, Subset

from nowt.data.cifar import cifar_normalize, load_cifar10
from nowt.data.datasets import load_fashion_mnist, load_mnist, mnist_normalize
from nowt.data.downloads import fetch
from nowt.data.imagenet import ImageFolder, listed, load_image_folders
from nowt.data.synthetic import synthetic
from nowt.data.text import TEXT_DATASETS, VOCAB, load_text
from nowt.data.transforms import Transform, cifar_augmentation

TensorPair = tuple[Tensor, Tensor]
DATASETS = ("mnist", "fashion-mnist", "cifar10", "imagenet", "synthetic", *TEXT_DATASETS)


class TransformDataset(Dataset):
    """In-memory images with a per-sample transform (augmentation)."""

    def __init__(self, x: Tensor, y: Tensor, transform: Transform, num_classes: int | None = None):
        self.x, self.y, self.transform = x, y, transform
        self.classes = list(range(num_classes if num_classes is not None else int(y.max()) + 1))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.x[i]), self.y[i]


@dataclass
class Data:
    train: TensorPair | Dataset
    test: TensorPair | Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    validation: TensorPair | None = None  # text corpora: held out of the training text


def _unchanged(x: Tensor) -> Tensor:
    return x


def _resized(x: Tensor, size: int | None) -> Tensor:
    """[0, 1] images (N, C, H, W) at size x size, bilinear, on the 1/255 grid of 8-bit pixels."""
    if size is None or x.shape[-2:] == (size, size):
        return x
    if size < 1:
        raise ValueError(f"--image-size must be at least 1, got {size}")
    out = torch.cat([F.interpolate(part, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=size < x.shape[-1]) for part in x.split(10000)])
    return out.mul_(255).round_().clamp_(0, 255).div_(255)


def balanced_sample(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """The indices, ascending, of `n` examples drawn at random (seeded), the classes as equal as their sizes
    allow: one of each class in a random order, then a second of each, and so on."""
    if n >= len(labels):
        return torch.arange(len(labels))
    return balanced_order(labels, seed)[:n].sort().values


def balanced_order(labels: Tensor, seed: int) -> Tensor:
    """Every index of `labels` in `balanced_sample`'s order: its first n are the sample of n."""
    labels = labels.long()  # uint8 labels (check_data admits them) would index `first` below as a mask
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    shuffled = labels[order]
    by_class = torch.argsort(shuffled, stable=True)
    counts = torch.bincount(shuffled)
    first = torch.cumsum(counts, 0) - counts  # where each class starts in by_class
    rank = torch.empty_like(order)  # of each drawn example among its class's
    rank[by_class] = torch.arange(len(labels)) - first[shuffled[by_class]]
    return order[torch.argsort(rank * len(labels) + torch.arange(len(labels)))]


def flat_subset(data: Dataset) -> tuple[Dataset, list[int]]:
    """(the Dataset under any Subsets of `data`, the indices into it of `data`'s examples, in order)."""
    if isinstance(data, Subset):
        base, index = flat_subset(data.dataset)
        return base, [index[i] for i in data.indices]
    return data, list(range(len(cast(Sized, data))))


def dataset_labels(data: TensorPair | Dataset) -> Tensor:
    """The label of every example, read without loading any image: of tensors, and of every Dataset kind
    `load_dataset` makes (an image folder, augmented tensors, a Subset of either), or one with `targets`."""
    if isinstance(data, tuple):
        return data[1]
    base, index = flat_subset(data)
    if isinstance(base, ImageFolder):
        labels = torch.as_tensor([y for _, y in base.samples], dtype=torch.long)
    elif isinstance(base, TransformDataset):
        labels = base.y
    elif hasattr(base, "targets"):  # torchvision's datasets
        labels = torch.as_tensor(base.targets)
    else:
        raise TypeError(f"cannot read the labels of a {type(base).__name__} without loading every example: "
                        f"give it a `targets` attribute (one label per example)")
    return labels if base is data else labels[index]


def unaugmented(data: TensorPair | Dataset) -> TensorPair | Dataset:
    """`data`'s examples as they are scored (as the test set is): without training augmentation (augmented
    tensors become the tensors; an image folder takes its `eval_transform`), in the same order."""
    if isinstance(data, tuple):
        return data
    base, index = flat_subset(data)
    if isinstance(base, TransformDataset):
        rows = torch.as_tensor(index, dtype=torch.long)
        return base.x[rows], base.y[rows]
    if not isinstance(base, ImageFolder):
        raise TypeError(f"cannot tell how a {type(base).__name__} is scored without its augmentation")
    plain = copy.copy(base)
    plain.transform = base.eval_transform
    return plain if base is data else Subset(plain, index)


#: the seed of the probe batch's class-balanced sample of the test set (`probe_batch`)
PROBE_SEED = 0


def first_examples(data: TensorPair | Dataset, n: int) -> TensorPair:
    """The first `n` examples of `data` (tensors or a Dataset of (input, label)) as one batch."""
    if isinstance(data, tuple):
        return data[0][:n], data[1][:n]
    return _batch(data, range(min(n, len(cast(Sized, data)))))


def probe_batch(test: TensorPair | Dataset, n: int = 256) -> TensorPair:
    """A fixed batch of `n` test examples (the training loop measures update angles and output collapse on
    it every epoch): a class-balanced random sample (`balanced_sample`, seed PROBE_SEED), not the first
    `n`, since image folders are in class order (ImageNet val's first 256 images are of 6 classes). The
    first `n` where an example has no one class label (text windows, or a Dataset whose labels cannot be
    read without loading it)."""
    try:
        labels = dataset_labels(test)
    except TypeError:
        return first_examples(test, n)
    if labels.dim() != 1 or labels.is_floating_point() or not len(labels) or int(labels.min()) < 0:
        return first_examples(test, n)
    rows = balanced_sample(labels, n, seed=PROBE_SEED)
    return (test[0][rows], test[1][rows]) if isinstance(test, tuple) else _batch(test, rows.tolist())


def _batch(data: Dataset, rows: Iterable[int]) -> TensorPair:
    items = [data[i] for i in rows]
    return torch.stack([x for x, _ in items]), torch.as_tensor([y for _, y in items])


def train_subset(train: TensorPair | Dataset, n: int) -> TensorPair | Dataset:
    """`--train-size n`: a class-balanced random sample of `n` training examples (`balanced_sample`, seed 0:
    the same examples for every run and seed), in their order in the dataset."""
    labels = dataset_labels(train)
    if n > len(labels):  # all of them, as asked for more: said, since config.json records n
        warnings.warn(f"--train-size {n} is more than the {len(labels)} training examples: training on all "
                      f"{len(labels)}", stacklevel=2)
    if n >= len(labels):
        return train
    keep = balanced_sample(labels, n)
    classes = labels.unique()
    if n < len(classes):  # a class-balanced sample of fewer examples than classes still leaves some out
        missing = [str(c) for c in classes[torch.isin(classes, labels[keep], invert=True)].tolist()]
        warnings.warn(f"--train-size {n} is fewer than the {len(classes)} classes: the model never trains on "
                      f"class(es) {listed(missing)}", stacklevel=2)
    return (train[0][keep], train[1][keep]) if isinstance(train, tuple) else Subset(train, keep.tolist())


def load_dataset(name: str, *, root: str | os.PathLike | None = None, download: bool = False,
                 augment: bool = False, train_size: int | None = None, standardize: bool = True,
                 image_size: int | None = None, context: int | None = None) -> Data:
    """Train and test data of `name` (see DATASETS), normalised.

    `root`: where the files are (defaults: MNIST embedded, Fashion-MNIST from the Debian package, CIFAR-10
    and downloads in the nowt cache directory). `download`: fetch MNIST, Fashion-MNIST or CIFAR-10 there
    first. `augment`: CIFAR crop and flip, ImageNet random resized crop and flip. `train_size`: keep a
    class-balanced random sample of n training examples, the same for every run (`train_subset`).
    `standardize=False`: MNIST, Fashion-MNIST and CIFAR-10 pixels stay in [0, 1] (pixels / 255), as in
    Akrout et al.'s official code. `image_size`: MNIST, Fashion-MNIST and CIFAR-10 images resized to that
    square size first (bilinear, rounded to 8-bit levels as a resize of the image files would be;
    BioTorch's LeNet runs see MNIST at 32 x 32). `context`: text corpora's window length (`nowt.data.text`:
    byte-level windows, contiguous train / validation / test parts, `train_size` the first N windows).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if not standardize and (name in TEXT_DATASETS or name == "synthetic"):
        raise ValueError(f"--no-standardize: {name!r} has no pixels to leave unstandardised (it applies to "
                         f"mnist, fashion-mnist and cifar10)")
    if name in TEXT_DATASETS:
        return _text(name, root, download, augment, image_size, context, train_size)
    if context is not None:
        raise ValueError(f"--context applies to the text datasets ({', '.join(TEXT_DATASETS)}), not {name!r}")
    if name == "synthetic" and (download or root is not None):  # made in memory: no files at all
        asked = [flag for flag, on in (("--download", download), ("--data-dir", root is not None)) if on]
        raise ValueError(f"{', '.join(asked)}: not for the synthetic dataset (made in memory, no files)")
    if root is not None and Path(root).exists() and not Path(root).is_dir():
        raise ValueError(f"--data-dir {root} is a file: give the folder that holds {name}'s files")
    if name == "imagenet" and download:
        raise ValueError("--download: not for 'imagenet' (its image folders are read from --data-dir; nowt "
                         "downloads mnist, fashion-mnist and cifar10)")
    if download and (name in ("fashion-mnist", "cifar10") or name == "mnist" and root is not None):
        root = fetch(name, root)  # MNIST without a root is the embedded copy: nothing to download
    train: TensorPair | Dataset
    test: TensorPair | ImageFolder
    if name in ("mnist", "fashion-mnist"):
        load = load_mnist if name == "mnist" else load_fashion_mnist
        (xtr, ytr), (xte, yte) = (load(split, root=root) for split in ("train", "test"))
        check_test_not_in_train(name, xtr, xte)  # the files' own images: a resize to a few pixels makes twins
        xtr, xte = _resized(xtr, image_size), _resized(xte, image_size)
        # Fashion-MNIST too takes MNIST's mean and std (its inputs then have mean 0.50, std 1.15): every
        # committed Fashion-MNIST run was made so; its own statistics would change what they compute.
        norm = mnist_normalize if standardize else _unchanged
        train, test = (norm(xtr), ytr), (norm(xte), yte)
    elif name == "cifar10":
        (xtr, ytr), (xte, yte) = (load_cifar10(split, root) for split in ("train", "test"))
        check_test_not_in_train(name, xtr, xte)
        xtr, xte = _resized(xtr, image_size), _resized(xte, image_size)
        norm = cifar_normalize if standardize else _unchanged
        train, test = (norm(xtr), ytr), (norm(xte), yte)
    elif image_size is not None:
        raise ValueError(f"--image-size: nowt resizes mnist, fashion-mnist and cifar10 only, not {name!r}")
    elif name == "synthetic":
        train, test = synthetic(n_train=2000, n_test=500, shape=(1, 8, 8), num_classes=4)
    else:
        if root is None:
            raise ValueError("imagenet needs --data-dir pointing at a folder with train/ and val/")
        if not standardize:
            raise ValueError("--no-standardize: image folders are always standardised (ImageNet mean/std)")
        train, test = load_image_folders(root, augment=augment)  # checked: the same classes
    if train_size is not None:  # one rule for every dataset
        train = train_subset(train, train_size)
    if isinstance(test, ImageFolder):  # image folders (train too, or a Subset of it)
        return Data(train, test, len(test.classes), (3, 224, 224))
    assert isinstance(train, tuple)  # as test: tensors
    num_classes = int(torch.cat([train[1], test[1]]).max()) + 1
    input_shape = tuple(train[0].shape[1:])
    if augment and name != "cifar10":
        raise ValueError(f"--augment: nowt has no augmentation for {name!r} (only cifar10 and imagenet)")
    if augment:
        train = TransformDataset(*train, cifar_augmentation(input_shape[-1]), num_classes)  # its size
    return Data(train, test, num_classes, input_shape)


def check_test_not_in_train(name: str, train: Tensor, test: Tensor, probes: int = 64) -> None:
    """Refuses a training set that holds the test set (a test file copied in place of a training file):
    it would train on the examples it is scored on, and report their error as the test error. Checked on
    `probes` test examples drawn at random (seeded): refused when every one of them is also, exactly, a
    training example (a few duplicates between the splits, as real datasets have, are no refusal)."""
    if len(test) == 0 or len(train) == 0 or train.shape[1:] != test.shape[1:]:
        return
    g = torch.Generator().manual_seed(0)
    rows = torch.randperm(len(test), generator=g)[:probes]
    sample = test[rows].flatten(1)
    columns = slice(None, None, -(-sample.shape[1] // 256))  # the keys read these; a match, every value
    weights = torch.randint(1, 2**31, (len(range(sample.shape[1])[columns]),), generator=g)
    keys = _row_keys(sample[:, columns], weights)
    found = torch.zeros(len(rows), dtype=torch.bool)
    for part in train.flatten(1).split(5000):
        for i in torch.isin(keys, _row_keys(part[:, columns], weights)).nonzero().flatten().tolist():
            found[i] |= bool((part == sample[i]).all(1).any())
    if found.all():
        raise ValueError(f"{name}: the training set holds the test set (each of {len(rows)} test examples "
                         f"drawn at random is also a training example): are test files copied in place of "
                         f"training files in --data-dir?")


def _row_keys(rows: Tensor, weights: Tensor) -> Tensor:
    """An integer key per row from its values' bits (integer sums: equal rows have equal keys exactly)."""
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}.get(rows.dtype)
    ints = rows.view(bits) if bits is not None else rows
    return (ints.long() * weights).sum(1)


def _warn_emptied_classes(labels: Tensor, order: Tensor, n: int, flag: str, names: list | None) -> None:
    """Says so where holding out the first `n` of `order` takes every training example of a class (a class
    smaller than the others' share: the sample is class-balanced): the model would never train on it."""
    counts = torch.bincount(labels)
    emptied = ((torch.bincount(labels[order[:n]], minlength=len(counts)) == counts) & (counts > 0)).nonzero()
    if not len(emptied):
        return
    # a class is emptied once n passes the place in `order` of its last example: the first such place bounds n
    last = torch.zeros_like(counts).scatter_reduce(0, labels[order], torch.arange(len(order)), "amax")
    most = int(last[counts > 0].min())
    shown = [str(names[c] if names is not None and c < len(names) else c) for c in emptied.flatten().tolist()]
    fewer = f"hold out at most {most}, or" if most else "hold out fewer, or"
    warnings.warn(f"{flag} {n} holds out every training example of class(es) {listed(shown)}: the model "
                  f"never trains on them ({fewer} give them more examples)", stacklevel=3)


def num_classes(train: TensorPair | Dataset, test: TensorPair | Dataset) -> int:
    """The classes a model of `train` and `test` must output: the `classes` of the training Dataset (an image
    folder's, augmented tensors'), else one more than the largest label of either part."""
    classes = None if isinstance(train, tuple) else getattr(flat_subset(train)[0], "classes", None)
    if classes is not None:
        return len(classes)
    labels = []
    for name, part in (("training", train), ("test", test)):
        try:
            labels.append(dataset_labels(part).flatten())
        except TypeError:
            raise ValueError(f"cannot tell the number of classes from the {name} data (a "
                             f"{type(part).__name__}): give it a `classes` attribute (or `targets`, one "
                             f"label per example), or pass an (inputs, labels) tuple of tensors") from None
    return int(torch.cat(labels).max()) + 1


def _text(name: str, root: str | os.PathLike | None, download: bool, augment: bool, image_size: int | None,
          context: int | None, train_size: int | None) -> Data:
    """A text corpus as `Data`: windows [N, T] of byte ids, next-byte targets [N, T], 256 classes."""
    asked = [flag for flag, on in (("--download", download), ("--augment", augment),
                                   ("--image-size", image_size is not None)) if on]
    if asked:
        raise ValueError(f"{', '.join(asked)}: not for the text dataset {name!r}")
    splits = load_text(name, root, **({} if context is None else {"context": context}), train_size=train_size)
    return Data(splits.train, splits.test, VOCAB, tuple(splits.train[0].shape[1:]), splits.validation)


#: the held-out sample's seed: not --train-size's (0), so that both may apply to one dataset
HOLDOUT_SEED = 1


def holdout(train: TensorPair | Dataset, n: int,
            flag: str = "--holdout") -> tuple[TensorPair | Dataset, TensorPair | Dataset]:
    """(the training set less `n` held-out examples, those examples): a class-balanced random sample, the
    same for every rule and seed. The held-out examples are scored as the test set is: without the training
    set's augmentation (`unaugmented`). Where the sample takes every example of a (small) class, a warning
    says so, and how many at most leave each class one."""
    labels = dataset_labels(train)
    if labels.dim() != 1:
        raise ValueError(f"{flag} needs one label per example (not a text corpus: it has a validation "
                         f"part of its own)")
    if not 0 < n < len(labels):
        raise ValueError(f"{flag} {n}: hold out between 1 and {len(labels) - 1} of the {len(labels)} "
                         f"training examples")
    order = balanced_order(labels, HOLDOUT_SEED)
    held = order[:n].sort().values  # balanced_sample(labels, n, seed=HOLDOUT_SEED)
    names = None if isinstance(train, tuple) else getattr(flat_subset(train)[0], "classes", None)
    _warn_emptied_classes(labels.long(), order, n, flag, names)
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[held] = False
    rest = kept.nonzero().squeeze(1)
    if isinstance(train, tuple):
        return (train[0][rest], train[1][rest]), (train[0][held], train[1][held])
    base, index = flat_subset(train)  # one Subset of the dataset itself, whose classes the loop reads
    plain = unaugmented(base)
    held_index = [index[i] for i in held.tolist()]
    return (Subset(base, [index[i] for i in rest.tolist()]),
            (plain[0][held_index], plain[1][held_index]) if isinstance(plain, tuple)
            else Subset(plain, held_index))
