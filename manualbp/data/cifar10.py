"""CIFAR-10: all 60,000 32x32 colour images from the official binary archive.

The archive ``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/data_batch_1.bin`` ..
``data_batch_5.bin`` (the official training set) and ``test_batch.bin`` (the official test set).
Each file is a sequence of 3073-byte records: one label byte (0..9), then 1024 red, 1024 green and
1024 blue pixel bytes, each plane row-major. The files are read straight from the tar stream;
nothing is unpickled.

Checksum: the SHA-256 published by TensorFlow Datasets (``url_checksums/cifar10.txt``, for the
170,052,171-byte file whose MD5 on the dataset's page is ``c32a1d4ab5d03f1284b67883e8d87530``).
"""

import tarfile
import zlib
from pathlib import Path

import numpy as np

from .archive import locate_archive
from .idx import DataError

__all__ = ["ARCHIVE", "CHECKSUMS", "CLASSES", "load_cifar10", "read_cifar10_archive",
           "read_cifar10_folder"]

ARCHIVE = "cifar-10-binary.tar.gz"
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
CHECKSUMS = ("c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",)
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32


def parse_records(raw, name):
    """Split the bytes of one batch file into uint8 images ``(n, 3, 32, 32)`` and int64 labels."""
    if len(raw) == 0 or len(raw) % RECORD:
        raise DataError(f"{name}: {len(raw)} bytes is not a whole, non-zero number of {RECORD}-byte "
                        "records (1 label byte + 3072 pixel bytes); the file is truncated or not "
                        "CIFAR-10 binary")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(CLASSES):
        raise DataError(f"{name}: label {int(labels.max())} out of range, expected 0..9")
    return records[:, 1:].reshape((-1,) + SHAPE).copy(), labels


def read_cifar10_archive(path):
    """Read the six batch files from ``cifar-10-binary.tar.gz`` at ``path``.

    Returns ``{file name: (images, labels)}``. Raises :class:`DataError` if the archive is
    truncated or corrupt, a file is missing, or the files hold different numbers of records.
    """
    wanted = {f"{FOLDER}/{f}": f for f in TRAIN_FILES + (TEST_FILE,)}
    found = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is None:
                    continue
                if not member.isfile():
                    raise DataError(f"{path}: {member.name} is not a regular file")
                found[name] = parse_records(tar.extractfile(member).read(), f"{path}: {member.name}")
            while tar.fileobj.read(1 << 20):        # to the end of the gzip stream: its CRC is
                pass                                 # checked even when the SHA-256 is not
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: truncated or corrupt archive ({type(exc).__name__}: {exc}); "
                        f"expected the complete {ARCHIVE}") from exc
    return _checked(found, path, "the archive")


def read_cifar10_folder(folder):
    """Read the six batch files from an extracted ``cifar-10-batches-bin/`` folder; returns
    what :func:`read_cifar10_archive` returns."""
    found = {f: parse_records((folder / f).read_bytes(), str(folder / f))
             for f in TRAIN_FILES + (TEST_FILE,) if (folder / f).is_file()}
    return _checked(found, folder, "the folder")


def _checked(found, source, where):
    """``found`` when it holds all six batch files with equal numbers of records."""
    wanted = TRAIN_FILES + (TEST_FILE,)
    missing = [f for f in wanted if f not in found]
    if missing:
        raise DataError(f"{source}: {', '.join(missing)} not found in {where}; expected "
                        f"{FOLDER}/ with {', '.join(wanted)}")
    counts = {f: len(found[f][1]) for f in wanted}
    if len(set(counts.values())) != 1:
        raise DataError(f"{source}: batch files hold different numbers of records {counts}; "
                        "expected the same number in each (10,000 in the official archive)")
    return found


def _extracted_folder(data_dir):
    """The extracted batch folder in (or at) ``data_dir`` when there is no archive there."""
    if data_dir is None or (Path(data_dir) / ARCHIVE).is_file():
        return None
    for folder in (Path(data_dir) / FOLDER, Path(data_dir)):
        if (folder / TEST_FILE).is_file():
            return folder
    return None


def load_cifar10(data_dir=None, cache_dir=None, download=True, verify=True):
    """Load all CIFAR-10 images: the five training batches, then the test batch.

    Returns host arrays: ``x`` uint8 ``(N, 3, 32, 32)``, ``y`` int64 ``(N,)``, ``official_test``
    bool ``(N,)`` (the last 10,000 rows), plus ``name``, ``source`` and ``classes``. The archive
    is found as :func:`manualbp.data.archive.locate_archive` describes; ``verify=False`` skips the
    checksum of a local archive (downloads are always verified). A ``data_dir`` that holds the
    extracted ``cifar-10-batches-bin/`` folder (or is that folder) is read as it is.
    """
    folder = _extracted_folder(data_dir)
    if folder is not None:
        path, parts = folder, read_cifar10_folder(folder)
    else:
        path = locate_archive("cifar10", ARCHIVE, MIRRORS, CHECKSUMS, data_dir, cache_dir, download, verify)
        parts = read_cifar10_archive(path)
    order = TRAIN_FILES + (TEST_FILE,)
    x = np.concatenate([parts[f][0] for f in order])
    y = np.concatenate([parts[f][1] for f in order])
    official_test = np.zeros(len(y), dtype=bool)
    official_test[-len(parts[TEST_FILE][1]):] = True
    return {"x": x, "y": y, "official_test": official_test, "name": "cifar10",
            "source": str(path), "classes": CLASSES}
