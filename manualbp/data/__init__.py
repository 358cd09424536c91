"""The paper's datasets: host-side loading (IDX files for MNIST and Fashion-MNIST, the CIFAR-10
and Tiny-ImageNet archives) with verified downloads, seeded splits, and the training
augmentation, which runs on the device."""

from .augment import crop_flip, random_crop_flip
from .cifar10 import load_cifar10, read_cifar10_archive
from .download import ChecksumError, default_cache_dir, fetch, sha256_of, verify_file
from .idx import DataError, read_idx
from .mnist import DATASETS, load_mnist, verify_dataset_dir
from .split import split_dataset, split_indices, split_sizes
from .tinyimagenet import load_tiny_imagenet, read_tiny_imagenet_archive

__all__ = [
    "DataError", "ChecksumError", "read_idx",
    "default_cache_dir", "sha256_of", "verify_file", "fetch",
    "DATASETS", "load_mnist", "verify_dataset_dir",
    "split_sizes", "split_indices", "split_dataset",
    "crop_flip", "random_crop_flip", "load_cifar10", "read_cifar10_archive",
    "load_tiny_imagenet", "read_tiny_imagenet_archive",
]
