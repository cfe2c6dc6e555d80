"""Datasets for nowt: embedded MNIST, Fashion-MNIST, CIFAR-10, image folders (ImageNet), synthetic data,
checksummed atomic downloads, and augmentation."""

from nowt.data.cifar import CIFAR10_MEAN, CIFAR10_STD, cifar_normalize, load_cifar10, read_cifar_batch
from nowt.data.datasets import MNIST_MEAN, MNIST_STD, load_fashion_mnist, load_mnist, mnist_normalize
from nowt.data.downloads import cache_dir, download, fetch
from nowt.data.idx import read_idx
from nowt.data.imagenet import ImageFolder, UnreadableImagesWarning, load_image_folder, load_image_folders
from nowt.data.registry import DATASETS, Data, TransformDataset, load_dataset
from nowt.data.synthetic import synthetic

__all__ = [
    "CIFAR10_MEAN", "CIFAR10_STD", "DATASETS", "Data", "ImageFolder", "MNIST_MEAN", "MNIST_STD",
    "TransformDataset", "cache_dir", "cifar_normalize", "download", "fetch", "load_cifar10",
    "load_dataset", "load_fashion_mnist", "load_image_folder", "load_mnist", "mnist_normalize",
    "UnreadableImagesWarning", "load_image_folders", "read_cifar_batch", "read_idx", "synthetic",
]
