"""Cache directory, SHA-256 verification and verified downloads.

A digest argument may be one hex string or a collection of accepted hex
strings (a file can be published in more than one byte-exact form).
Digests are SHA-256 (64 hex digits); a 32-digit digest is read as MD5,
for files whose publisher gives only an MD5.
Downloads go to a temporary file beside the target, are verified, and only
then renamed into place with ``os.replace`` so a failed or interrupted
download never leaves a file under the final name.
"""

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from .idx import DataError

__all__ = ["ChecksumError", "default_cache_dir", "sha256_of", "verify_file", "fetch"]

_CHUNK = 1 << 20
#: hex length of a digest -> (hashlib name, name in messages)
_ALGORITHMS = {64: ("sha256", "SHA-256"), 32: ("md5", "MD5")}


class ChecksumError(DataError):
    """A file's digest is not one of the accepted digests."""


def default_cache_dir():
    """``$MANUALBP_DATA`` if set, else ``~/.cache/manualbp``."""
    env = os.environ.get("MANUALBP_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "manualbp"


def sha256_of(path):
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    return _digests_of(path, ("sha256",))["sha256"]


def _digests_of(path, algorithms):
    """``{algorithm: hex digest}`` of a file, read once in 1 MiB chunks."""
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashes.items()}


def _accepted(sha256):
    if isinstance(sha256, str):
        return (sha256.lower(),)
    out = tuple(s.lower() for s in sha256)
    if not out:
        raise ValueError("at least one accepted SHA-256 digest is required")
    return out


def _algorithms(accepted):
    """The hashlib names the accepted digests need, in a fixed order."""
    bad = [d for d in accepted if len(d) not in _ALGORITHMS]
    if bad:
        raise ValueError(f"digest {bad[0]!r} is neither SHA-256 (64 hex digits) nor MD5 (32)")
    return tuple(sorted({_ALGORITHMS[len(d)][0] for d in accepted}, reverse=True))


def _matches(accepted, actual):
    """Whether one of the ``{algorithm: digest}`` values is an accepted digest."""
    return any(d in accepted for d in actual.values())


def _mismatch(name, accepted, actual):
    want = " or ".join(accepted)
    labels = {a: label for a, label in _ALGORITHMS.values()}
    kind = "/".join(labels[a] for a in actual)
    got = " / ".join(actual.values())
    return ChecksumError(f"{name}: {kind} mismatch: expected {want}, got {got}")


def verify_file(path, sha256):
    """Check ``path`` against one or several accepted digests.

    Returns the actual digest; raises :class:`ChecksumError` on a mismatch.
    """
    accepted = _accepted(sha256)
    actual = _digests_of(path, _algorithms(accepted))
    if not _matches(accepted, actual):
        raise _mismatch(Path(path).name, accepted, actual)
    return next(iter(actual.values()))


def _download(url, dest, accepted, timeout):
    """Download ``url`` to ``dest`` via a verified temporary file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        hashes = {a: hashlib.new(a) for a in _algorithms(accepted)}
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(_CHUNK), b""):
                for h in hashes.values():
                    h.update(chunk)
                out.write(chunk)
        actual = {a: h.hexdigest() for a, h in hashes.items()}
        if not _matches(accepted, actual):
            raise _mismatch(f"{dest.name} (from {url})", accepted, actual)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(filename, mirrors, sha256, dest_dir, timeout=30.0):
    """Return ``dest_dir/filename``, downloading it if absent or corrupt.

    ``mirrors`` are base URLs tried in turn (``filename`` is appended); any
    scheme urllib knows works, ``file://`` included.  Raises
    :class:`ChecksumError` if a mirror served wrong bytes and none served
    the right ones, else :class:`DataError` listing every URL tried.
    """
    accepted = _accepted(sha256)
    dest_dir = Path(dest_dir)
    dest = dest_dir / filename
    if dest.is_file() and _matches(accepted, _digests_of(dest, _algorithms(accepted))):
        return dest
    if not mirrors:
        raise DataError(f"{filename}: no mirror URL to download it from")
    dest_dir.mkdir(parents=True, exist_ok=True)
    failures, bad_checksum = [], None
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            _download(url, dest, accepted, timeout)
            return dest
        except ChecksumError as exc:
            bad_checksum = exc
            failures.append(f"{url} ({exc})")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"{url} ({type(exc).__name__}: {exc})")
    tried = "; ".join(failures)
    if bad_checksum is not None:
        if len(failures) == 1:
            raise bad_checksum
        raise ChecksumError(f"{filename}: no mirror served the expected bytes: {tried}")
    raise DataError(f"{filename}: download failed from every mirror: {tried}")
