"""Reader for IDX files, the format of the MNIST family of datasets.

An IDX file is a 4-byte magic number ``00 00 TT NN`` (``TT`` the element
type code, ``NN`` the number of dimensions), then ``NN`` big-endian uint32
dimension sizes, then the elements in C order, big-endian.  Files starting
with the gzip magic bytes are decompressed first, whatever their name.
"""

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["DataError", "IDX_DTYPES", "read_idx", "parse_idx"]

_GZIP_MAGIC = b"\x1f\x8b"

#: IDX type code -> element dtype (multi-byte types are big-endian on disk).
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(ValueError):
    """A dataset file is missing, malformed or fails verification."""


def _shape_str(dims):
    return "x".join(str(d) for d in dims) if dims else "scalar"


def parse_idx(raw, name="<bytes>", expected_ndim=None):
    """Decode the bytes of an (uncompressed) IDX file into a native-endian array."""
    if len(raw) < 4:
        raise DataError(f"{name}: truncated: {len(raw)} bytes, expected at least "
                        "a 4-byte IDX magic number")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    magic = int.from_bytes(raw[:4], "big")
    if zero0 or zero1:
        raise DataError(f"{name}: bad magic number 0x{magic:08x}: expected 0x0000TTNN "
                        "(two zero bytes, type code, number of dimensions)")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise DataError(f"{name}: bad magic number 0x{magic:08x}: unknown type code "
                        f"0x{code:02x}, expected one of {known}")
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataError(f"{name}: header says {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: truncated header: {ndim} dimensions need {header} "
                        f"header bytes, file holds {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    need = count * dtype.itemsize
    have = len(raw) - header
    if have != need:
        size = _shape_str(dims)
        if dtype.itemsize > 1:
            size += f" x {dtype.itemsize}"
        what = "truncated" if have < need else "trailing bytes"
        raise DataError(f"{name}: {what}: header promises {size} = {need} bytes, "
                        f"file holds {have}")
    arr = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype copies into a writable, native-byte-order array.
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path, expected_ndim=None):
    """Read an IDX file (raw or gzip-compressed) into a numpy array.

    Raises :class:`DataError` naming the file on a bad magic number, an
    unexpected number of dimensions, a truncated file or stream, or
    trailing bytes after the payload.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{path.name}: truncated or corrupt gzip stream ({exc}); "
                            "expected a complete gzip file") from exc
    return parse_idx(raw, path.name, expected_ndim)
