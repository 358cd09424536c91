"""MNIST and Fashion-MNIST: locate, verify and load all 70,000 images.

Checksum scheme: each of the four ``.gz`` files has a small set of accepted
SHA-256 digests of the compressed file.  The upstream digests are those
published by TensorFlow Datasets (``url_checksums/mnist.txt`` and
``fashion_mnist.txt``).  Debian's ``dataset-fashion-mnist`` package ships
the same images re-compressed, so its ``.gz`` digests are accepted too.

Lookup order: ``data_dir`` only, if given; else ``<cache_dir>/<name>``;
else the system directories of a distribution package (Fashion-MNIST:
``/usr/share/datasets/fashion-mnist``); else download into the cache if
``download`` is true.
"""

from pathlib import Path

import numpy as np

from .download import ChecksumError, default_cache_dir, fetch, verify_file
from .idx import DataError, read_idx

__all__ = ["DATASETS", "FILES", "MIRRORS", "CHECKSUMS", "SYSTEM_DIRS",
           "load_mnist", "verify_dataset_dir"]

DATASETS = ("mnist", "fashion-mnist")

#: class names by label, as the datasets publish them
CLASSES = {"mnist": tuple(str(d) for d in range(10)),
           "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                             "Sneaker", "Bag", "Ankle boot")}
#: (train images, train labels, official test images, official test labels)
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/",
              "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

#: Accepted SHA-256 digests of each compressed file.
CHECKSUMS = {
    "mnist": {  # as published by TensorFlow Datasets
        "train-images-idx3-ubyte.gz":
            ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",),
        "train-labels-idx1-ubyte.gz":
            ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",),
        "t10k-images-idx3-ubyte.gz":
            ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",),
        "t10k-labels-idx1-ubyte.gz":
            ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",),
    },
    "fashion-mnist": {  # upstream (TensorFlow Datasets), then Debian's package
        "train-images-idx3-ubyte.gz":
            ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
             "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
        "train-labels-idx1-ubyte.gz":
            ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
             "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
        "t10k-images-idx3-ubyte.gz":
            ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
             "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
        "t10k-labels-idx1-ubyte.gz":
            ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
             "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
    },
}

#: Directories where a distribution package installs the files.
SYSTEM_DIRS = {
    "mnist": (),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

_HINTS = {"fashion-mnist": "apt-get install dataset-fashion-mnist"}


def _check_name(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


def _missing(directory):
    return [f for f in FILES if not (Path(directory) / f).is_file()]


def verify_dataset_dir(name, directory):
    """Check the four files in ``directory`` against the digest table.

    Raises :class:`DataError` if a file is missing and
    :class:`ChecksumError` if one does not match.
    """
    _check_name(name)
    directory = Path(directory)
    missing = _missing(directory)
    if missing:
        raise DataError(f"{name}: {', '.join(missing)} not found in {directory}")
    for f in FILES:
        verify_file(directory / f, CHECKSUMS[name][f])


def _how_to_get(name, data_dir_given=False):
    ways = []
    if name in _HINTS:
        ways.append(_HINTS[name])
    ways.append(f"download {', '.join(FILES)} from {MIRRORS[name][0]} into a directory "
                "and pass it as --data-dir (data_dir=...)")
    ways.append("omit data_dir to use the cache and download with network access"
                if data_dir_given else "allow network access (download=True)")
    return "; or ".join(ways)


def _locate(name, data_dir, cache_dir, download, verify):
    """Return the directory holding the four files (see module docstring)."""
    if data_dir is not None:
        data_dir = Path(data_dir)
        missing = _missing(data_dir)
        if missing:
            raise DataError(f"{name}: {', '.join(missing)} not found in data_dir {data_dir}. "
                            f"To get the files: {_how_to_get(name, True)}")
        if verify:
            verify_dataset_dir(name, data_dir)
        return data_dir

    cache = Path(cache_dir if cache_dir is not None else default_cache_dir()) / name
    searched = []
    for d in (cache, *SYSTEM_DIRS[name]):
        missing = _missing(d)
        if not missing:
            if not verify:
                return d
            try:
                verify_dataset_dir(name, d)
                return d
            except ChecksumError:
                if d != cache or not download:
                    raise  # a corrupt cache is repaired by the download below
        searched.append(f"{d} (missing {len(missing)} of {len(FILES)} files)" if missing
                        else f"{d} (checksum mismatch)")

    reason = "downloading disabled (download=False)"
    if download:
        try:
            for f in FILES:
                fetch(f, MIRRORS[name], CHECKSUMS[name][f], cache)
            return cache
        except ChecksumError:
            raise
        except DataError as exc:
            reason = f"download failed: {exc}"
    raise DataError(f"{name}: dataset files not found. Looked in: {'; '.join(searched)}; "
                    f"{reason}. To get the files: {_how_to_get(name)}")


def _pair(directory, img_file, lbl_file):
    images = read_idx(directory / img_file, expected_ndim=3)
    labels = read_idx(directory / lbl_file, expected_ndim=1)
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_file}: expected uint8 images of shape (N, 28, 28), "
                        f"got {images.dtype} {images.shape}")
    if len(images) == 0:
        raise DataError(f"{img_file}: holds 0 images, expected at least one")
    if labels.dtype != np.uint8:
        raise DataError(f"{lbl_file}: expected uint8 labels, got {labels.dtype}")
    if len(labels) != len(images):
        raise DataError(f"{lbl_file}: {len(labels)} labels for {len(images)} images "
                        f"in {img_file}; expected equal counts")
    if labels.size and labels.max() > 9:
        raise DataError(f"{lbl_file}: label {int(labels.max())} out of range, expected 0..9")
    return images, labels


def load_mnist(name="mnist", data_dir=None, cache_dir=None, download=True, verify=True):
    """Load all 70,000 images of ``name`` ("mnist" or "fashion-mnist").

    Returns host arrays: ``x`` uint8 images (N, 1, 28, 28), ``y`` int64 (N,),
    ``official_test`` bool (N,) marking rows from the official test set
    (the last 10,000: official train rows come first), plus ``name`` and
    ``source`` (the directory read).  ``verify=False`` skips the checksum
    check of files found locally (downloads are always verified).
    """
    _check_name(name)
    directory = _locate(name, data_dir, cache_dir, download, verify)
    tr_x, tr_y = _pair(directory, FILES[0], FILES[1])
    te_x, te_y = _pair(directory, FILES[2], FILES[3])
    n_tr, n_te = len(tr_x), len(te_x)
    x = np.concatenate([tr_x, te_x])[:, None]
    y = np.concatenate([tr_y, te_y]).astype(np.int64)
    official_test = np.zeros(n_tr + n_te, dtype=bool)
    official_test[n_tr:] = True
    return {"x": x, "y": y, "official_test": official_test,
            "name": name, "source": str(directory)}
