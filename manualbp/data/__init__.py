"""Host-side data loading: IDX files, verified downloads, MNIST, splits."""

from .download import ChecksumError, default_cache_dir, fetch, sha256_of, verify_file
from .idx import DataError, read_idx
from .mnist import DATASETS, load_mnist, verify_dataset_dir
from .split import split_dataset, split_indices, split_sizes

__all__ = [
    "DataError", "ChecksumError", "read_idx",
    "default_cache_dir", "sha256_of", "verify_file", "fetch",
    "DATASETS", "load_mnist", "verify_dataset_dir",
    "split_sizes", "split_indices", "split_dataset",
]
from .augment import crop_flip, random_crop_flip
from .cifar10 import load_cifar10, read_cifar10_archive
from .tinyimagenet import load_tiny_imagenet, read_tiny_imagenet_archive

__all__ += ["crop_flip", "random_crop_flip", "load_cifar10", "read_cifar10_archive",
            "load_tiny_imagenet", "read_tiny_imagenet_archive"]
