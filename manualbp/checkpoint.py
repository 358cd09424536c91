"""Checkpoints: named arrays in one ``.npz`` plus JSON metadata, written atomically, no pickle.

The metadata (JSON, stored inside the archive as ``meta.json``) records the SHA-256 of every
array, and the archive member ``meta.sha256`` that of the metadata itself, so a damaged or
edited file is refused instead of silently resuming from bad state.
"""
import hashlib
import io
import json
import math
import os
import tempfile
import zipfile

import numpy

META_KEY = "meta.json"
META_DIGEST_KEY = "meta.sha256"
TEMPORARY_PREFIX = ".tmp-"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not fit what it is loaded into."""


def _digest(array):
    return hashlib.sha256(numpy.ascontiguousarray(array).tobytes()).hexdigest()


def write_atomically(path, write):
    """Call ``write(binary file)`` on a temporary file in ``path``'s directory, flush it to disk,
    then rename it over ``path``: ``path`` holds the old content or the new, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMPORARY_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def json_safe(value):
    """``value`` with every non-finite float (NaN, inf) as ``None``: what strict JSON can hold."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path, value, indent=2):
    """Write ``value`` as valid JSON (non-finite floats as ``null``) to ``path`` atomically."""
    write_text(path, json.dumps(json_safe(value), indent=indent, allow_nan=False))


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    data = text.encode()
    write_atomically(path, lambda f: f.write(data))


def remove_temporary_files(directory):
    """Delete what :func:`write_atomically` left in ``directory`` when a run was killed."""
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(TEMPORARY_PREFIX):
                os.remove(os.path.join(directory, name))


def save(path, arrays, meta):
    """Write ``arrays`` (name -> host array) and ``meta`` (JSON-able dict) to ``path`` atomically."""
    arrays = {name: numpy.asarray(a) for name, a in arrays.items()}
    meta = dict(meta, sha256={name: _digest(a) for name, a in arrays.items()})
    text = json.dumps(meta).encode()
    payload = dict(arrays)
    payload[META_KEY] = numpy.frombuffer(text, dtype=numpy.uint8)
    payload[META_DIGEST_KEY] = numpy.frombuffer(hashlib.sha256(text).hexdigest().encode(), dtype=numpy.uint8)
    write_atomically(path, lambda f: numpy.savez(f, **payload))


def load(path):
    """Read a checkpoint; returns ``(arrays, meta)``. Raises :class:`CheckpointError` when the
    file is missing, not a valid archive, lacks metadata, or an array fails its checksum."""
    arrays = _read(path, None)
    meta = _metadata(path, arrays.pop(META_KEY, None), arrays.pop(META_DIGEST_KEY, None))
    digests = meta.pop("sha256", {})
    if set(digests) != set(arrays):
        raise CheckpointError(f"checkpoint {path}: arrays {sorted(arrays)} do not match the "
                              f"metadata's list {sorted(digests)}")
    for name, array in arrays.items():
        if _digest(array) != digests[name]:
            raise CheckpointError(f"checkpoint {path}: array {name!r} fails its SHA-256 check")
    return arrays, meta


def load_meta(path):
    """The metadata of a checkpoint alone, checked against its SHA-256 (its arrays are not
    read): what a run checks before any work."""
    arrays = _read(path, (META_KEY, META_DIGEST_KEY))
    meta = _metadata(path, arrays.get(META_KEY), arrays.get(META_DIGEST_KEY))
    meta.pop("sha256", None)
    return meta


def _read(path, names):
    """The members ``names`` (all when ``None``; those present) of the archive at ``path``."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files if names is None or name in names}
    # a damaged zip header can also claim an unknown compression method or encryption
    # (NotImplementedError, RuntimeError from zipfile)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {err}") from None


def _metadata(path, text, digest):
    """The metadata read from the archive members ``meta.json`` and ``meta.sha256``."""
    if text is None or digest is None:
        raise CheckpointError(f"checkpoint {path} has no {META_KEY} and {META_DIGEST_KEY}: not written "
                              "by this version of manualbp")
    text = text.tobytes()
    if hashlib.sha256(text).hexdigest().encode() != digest.tobytes():
        raise CheckpointError(f"checkpoint {path}: {META_KEY} fails its SHA-256 check (edited or damaged)")
    try:
        return json.load(io.BytesIO(text))
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path}: unreadable metadata ({err})") from None
