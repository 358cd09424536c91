"""Tiny-ImageNet: the 110,000 labelled 64x64 colour images (200 classes) of the official archive.

``tiny-imagenet-200.zip`` holds ``tiny-imagenet-200/wnids.txt`` (the 200 class ids),
``train/<wnid>/images/*.JPEG`` (500 per class) and ``val/images/*.JPEG`` with their labels in
``val/val_annotations.txt`` (file name, tab, wnid, then a bounding box). The unlabelled ``test``
images are not used. JPEGs are decoded with Pillow (grayscale ones converted to RGB) once, and
cached as ``tiny-imagenet-200.npz`` of uint8 arrays next to the archive, keyed by the archive's
digest so a different archive is decoded afresh, with the SHA-256 of its content so a damaged or
rewritten cache is decoded afresh too.

Checksum: the MD5 ``90528d7ca1a48142e341f4ef8d21d0de`` published with the dataset (no SHA-256 of
the file is published).
"""

import hashlib
import io
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .archive import locate_archive
from .download import _digests_of
from .idx import DataError

__all__ = ["ARCHIVE", "CHECKSUMS", "load_tiny_imagenet", "read_tiny_imagenet_archive"]

ARCHIVE = "tiny-imagenet-200.zip"
MIRRORS = ("http://cs231n.stanford.edu/",)
CHECKSUMS = ("90528d7ca1a48142e341f4ef8d21d0de",)
ROOT = "tiny-imagenet-200"
SIZE = 64
CACHE_VERSION = 2


def decode_jpeg(data, name):
    """One JPEG's bytes -> uint8 ``(3, 64, 64)`` RGB (grayscale and CMYK images converted)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as img:
            pixels = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{name}: not a readable JPEG ({exc})") from exc
    if pixels.shape != (SIZE, SIZE, 3):
        raise DataError(f"{name}: image is {pixels.shape[1]}x{pixels.shape[0]}, expected {SIZE}x{SIZE}")
    return pixels.transpose(2, 0, 1)


def _text(zf, name):
    try:
        return zf.read(name).decode("utf-8")
    except KeyError:
        raise DataError(f"{zf.filename}: {name} not found in the archive") from None


def _labelled_files(zf):
    """``(wnids, [(member name, label index)], number of training images)``."""
    wnids = sorted(line.strip() for line in _text(zf, f"{ROOT}/wnids.txt").splitlines() if line.strip())
    index = {w: i for i, w in enumerate(wnids)}
    train = {w: [] for w in wnids}
    for name in zf.namelist():
        parts = name.split("/")
        if len(parts) == 5 and parts[:2] == [ROOT, "train"] and parts[3] == "images" \
                and parts[4].upper().endswith(".JPEG"):
            if parts[2] not in index:
                raise DataError(f"{zf.filename}: {name} is in class {parts[2]!r}, which wnids.txt "
                                "does not list")
            train[parts[2]].append(name)
    empty = [w for w, files in train.items() if not files]
    if empty:
        raise DataError(f"{zf.filename}: no training images for {len(empty)} classes of wnids.txt "
                        f"(e.g. {empty[0]}); expected {ROOT}/train/<wnid>/images/*.JPEG")
    files = [(name, index[w]) for w in wnids for name in sorted(train[w])]
    n_train = len(files)
    for line in _text(zf, f"{ROOT}/val/val_annotations.txt").splitlines():
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{zf.filename}: bad line in val_annotations.txt: {line!r}; expected "
                            "'<file>\\t<wnid from wnids.txt>\\t...'")
        files.append((f"{ROOT}/val/images/{fields[0]}", index[fields[1]]))
    return wnids, files, n_train


def read_tiny_imagenet_archive(path):
    """Decode every labelled image of ``tiny-imagenet-200.zip`` at ``path``.

    Returns ``{"x": uint8 (N, 3, 64, 64), "y": int64 (N,), "official_val": bool (N,),
    "wnids": str (200,)}``: training images class by class, then the validation images.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            wnids, files, n_train = _labelled_files(zf)
            x = np.empty((len(files), 3, SIZE, SIZE), dtype=np.uint8)
            for i, (name, _) in enumerate(files):
                try:
                    data = zf.read(name)
                except KeyError:
                    raise DataError(f"{path}: {name} is listed in val_annotations.txt but not in "
                                    "the archive") from None
                x[i] = decode_jpeg(data, f"{path}: {name}")
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DataError(f"{path}: truncated or corrupt archive ({type(exc).__name__}: {exc}); "
                        f"expected the complete {ARCHIVE}") from exc
    y = np.array([label for _, label in files], dtype=np.int64)
    official_val = np.arange(len(files)) >= n_train
    return {"x": x, "y": y, "official_val": official_val, "wnids": np.array(wnids)}


def _archive_key(path):
    """The decoded cache's key: its format version and the archive's MD5."""
    return f"v{CACHE_VERSION}:{_digests_of(path, ('md5',))['md5']}"


CACHED = ("x", "y", "official_val", "wnids")


def _content_digest(arrays):
    """SHA-256 of the cached arrays' bytes, in a fixed order."""
    digest = hashlib.sha256()
    for name in CACHED:
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def _read_cache(cache, key):
    """The cached arrays, or ``None`` when the cache is missing, partial, damaged, rewritten
    (its content no longer matches its digest) or from another archive: decode again."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            arrays = {k: z[k] for k in CACHED}
            digest = str(z["digest"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        return None
    return arrays if _content_digest(arrays) == digest else None


def _write_cache(cache, arrays, key):
    """Write the decoded arrays and their digest atomically (temporary file, then rename); warn
    if impossible."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".part", dir=cache.parent)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, key=np.array(key), digest=np.array(_content_digest(arrays)), **arrays)
        os.replace(tmp, cache)
    except OSError as exc:
        warnings.warn(f"cannot cache decoded Tiny-ImageNet at {cache} ({exc}); it will be decoded "
                      "again next time")
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


def load_tiny_imagenet(data_dir=None, cache_dir=None, download=True, verify=True):
    """Load the 110,000 labelled Tiny-ImageNet images (official train, then official val).

    Returns host arrays: ``x`` uint8 ``(N, 3, 64, 64)``, ``y`` int64 ``(N,)`` (index into the
    sorted ``wnids``), ``official_val`` bool ``(N,)``, plus ``wnids``, ``name`` and ``source``.
    The archive is found as :func:`manualbp.data.archive.locate_archive` describes.
    """
    path = locate_archive("tiny-imagenet", ARCHIVE, MIRRORS, CHECKSUMS, data_dir, cache_dir,
                          download, verify)
    cache = Path(path).with_suffix(".npz")
    key = _archive_key(path)
    arrays = _read_cache(cache, key)
    if arrays is None:
        arrays = read_tiny_imagenet_archive(path)
        _write_cache(cache, arrays, key)
    return {**arrays, "name": "tiny-imagenet", "source": str(path)}
