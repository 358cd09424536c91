"""Tests for manualbp.data: IDX reading, verified fetch, MNIST loading, splits."""

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from manualbp.data import (
    ChecksumError, DataError, default_cache_dir, fetch, load_mnist,
    read_idx, sha256_of, split_dataset, split_indices, split_sizes, verify_file,
)
from manualbp.data import mnist as mnist_mod
from manualbp.data.idx import IDX_DTYPES

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def idx_bytes(arr, code=None, dims=None):
    """Encode ``arr`` in the official IDX layout (header + big-endian payload)."""
    arr = np.asarray(arr)
    if code is None:
        code = next(c for c, dt in IDX_DTYPES.items() if dt.newbyteorder("=") == arr.dtype)
    dims = arr.shape if dims is None else dims
    header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + arr.astype(IDX_DTYPES[code]).tobytes()


def write_idx(path, arr, gz=None, **kw):
    path = Path(path)
    raw = kw.pop("raw", None) or idx_bytes(arr, **kw)
    if gz is None:
        gz = path.suffix == ".gz"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


# ---------------------------------------------------------------- read_idx

@pytest.mark.parametrize("name", ["a-idx3-ubyte.gz", "a-idx3-ubyte"])
def test_round_trip_uint8(tmp_path, name):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 7
    out = read_idx(write_idx(tmp_path / name, arr))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "f4", "f8"])
def test_round_trip_other_types(tmp_path, dtype):
    arr = (np.arange(12) - 5).astype(dtype).reshape(3, 4) * 3
    out = read_idx(write_idx(tmp_path / "x.gz", arr))
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    out[0, 0] = 1  # writable


def test_wrong_magic(tmp_path):
    raw = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    raw[0] = 1
    p = write_idx(tmp_path / "bad.gz", None, raw=bytes(raw))
    with pytest.raises(DataError, match=r"bad\.gz: bad magic number 0x01000801"):
        read_idx(p)


def test_unknown_type_code(tmp_path):
    raw = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    raw[2] = 0x0A
    with pytest.raises(DataError, match="unknown type code 0x0a"):
        read_idx(write_idx(tmp_path / "t", None, raw=bytes(raw)))


def test_expected_ndim(tmp_path):
    p = write_idx(tmp_path / "labels.gz", np.zeros((2, 3), np.uint8))
    with pytest.raises(DataError, match="labels.gz: header says 2 dimensions, expected 1"):
        read_idx(p, expected_ndim=1)
    assert read_idx(p, expected_ndim=2).shape == (2, 3)


def test_ndim_larger_than_header(tmp_path):
    # Header claims 3 dimensions but only two sizes follow.
    raw = bytes([0, 0, 8, 3]) + struct.pack(">2I", 1, 1)
    with pytest.raises(DataError, match="truncated header: 3 dimensions need 16 header bytes, file holds 12"):
        read_idx(write_idx(tmp_path / "h", None, raw=raw))


def test_dims_disagree_with_payload(tmp_path):
    # 2x5 header, payload of 2x4 elements.
    raw = idx_bytes(np.zeros((2, 4), np.uint8), dims=(2, 5))
    with pytest.raises(DataError, match=r"truncated: header promises 2x5 = 10 bytes, file holds 8"):
        read_idx(write_idx(tmp_path / "d", None, raw=raw))


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload(tmp_path, gz):
    raw = idx_bytes(np.ones((10, 28, 28), np.uint8))
    p = write_idx(tmp_path / "train-images-idx3-ubyte.gz", None, raw=raw[:1000 + 16], gz=gz)
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: truncated: header promises "
                                         r"10x28x28 = 7840 bytes, file holds 1000"):
        read_idx(p)


def test_truncated_multibyte_message(tmp_path):
    raw = idx_bytes(np.ones(6, ">i4"), code=0x0C)[:-1]
    with pytest.raises(DataError, match=r"header promises 6 x 4 = 24 bytes, file holds 23"):
        read_idx(write_idx(tmp_path / "i", None, raw=raw))


def test_truncated_gzip_stream(tmp_path):
    rng = np.random.default_rng(0)
    comp = gzip.compress(idx_bytes(rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    p = tmp_path / "cut.gz"
    p.write_bytes(comp[: len(comp) // 2])
    with pytest.raises(DataError, match=r"cut\.gz: truncated or corrupt gzip stream"):
        read_idx(p)


def test_corrupt_gzip_stream(tmp_path):
    comp = bytearray(gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8))))
    comp[12:20] = b"\xff" * 8
    p = tmp_path / "bad.gz"
    p.write_bytes(bytes(comp))
    with pytest.raises(DataError, match="bad.gz"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_trailing_bytes(tmp_path, gz):
    raw = idx_bytes(np.zeros(5, np.uint8)) + b"junk"
    p = write_idx(tmp_path / "lab", None, raw=raw, gz=gz)
    with pytest.raises(DataError, match="lab: trailing bytes: header promises 5 = 5 bytes, file holds 9"):
        read_idx(p)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError) and issubclass(ChecksumError, DataError)


# ---------------------------------------------------------------- download

def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MANUALBP_DATA", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MANUALBP_DATA")
    assert default_cache_dir() == Path.home() / ".cache" / "manualbp"


def test_sha256_of_and_verify(tmp_path):
    p = tmp_path / "f"
    data = b"x" * (3 << 20) + b"tail"  # several chunks
    p.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    assert sha256_of(p) == digest
    assert verify_file(p, [("0" * 64), digest.upper()]) == digest
    with pytest.raises(ChecksumError, match=f"f: SHA-256 mismatch: expected {'0' * 64}, got {digest}"):
        verify_file(p, "0" * 64)


@pytest.fixture
def mirror(tmp_path):
    src = tmp_path / "mirror"
    src.mkdir()
    payload = b"hello idx" * 100
    (src / "file.gz").write_bytes(payload)
    return src.as_uri() + "/", hashlib.sha256(payload).hexdigest(), payload


def test_fetch_success_and_reuse(tmp_path, mirror):
    url, digest, payload = mirror
    dest = tmp_path / "dest"
    p = fetch("file.gz", ["file:///nonexistent/dir/", url], digest, dest)
    assert p == dest / "file.gz" and p.read_bytes() == payload
    assert sorted(x.name for x in dest.iterdir()) == ["file.gz"]
    # Present and valid: returned without touching any mirror.
    assert fetch("file.gz", ["file:///nonexistent/"], digest, dest) == p


def test_fetch_replaces_corrupt_local_file(tmp_path, mirror):
    url, digest, payload = mirror
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "file.gz").write_bytes(b"corrupt")
    assert fetch("file.gz", [url], digest, dest).read_bytes() == payload


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path, mirror):
    url, digest, _ = mirror
    dest = tmp_path / "dest"
    bad = "ab" * 32
    with pytest.raises(ChecksumError) as ei:
        fetch("file.gz", [url], bad, dest)
    msg = str(ei.value)
    assert "file.gz" in msg and f"expected {bad}" in msg and f"got {digest}" in msg
    assert list(dest.iterdir()) == []


def test_fetch_all_mirrors_fail(tmp_path):
    urls = ["file:///nonexistent/a/", "file:///nonexistent/b"]
    with pytest.raises(DataError) as ei:
        fetch("file.gz", urls, "0" * 64, tmp_path / "dest")
    msg = str(ei.value)
    assert not isinstance(ei.value, ChecksumError)
    assert "download failed from every mirror" in msg
    assert "file:///nonexistent/a/file.gz" in msg and "file:///nonexistent/b/file.gz" in msg
    assert "URLError" in msg
    assert list((tmp_path / "dest").iterdir()) == []


# ---------------------------------------------------------------- load_mnist

def make_fake_dataset(directory, n_train=6, n_test=4):
    """Four small IDX files; image k (in concatenated order) is filled with k."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n = n_train + n_test
    imgs = (np.arange(n, dtype=np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8))
    imgs[:, 0, 0] = 255
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(directory / "train-images-idx3-ubyte.gz", imgs[:n_train])
    write_idx(directory / "train-labels-idx1-ubyte.gz", labels[:n_train])
    write_idx(directory / "t10k-images-idx3-ubyte.gz", imgs[n_train:])
    write_idx(directory / "t10k-labels-idx1-ubyte.gz", labels[n_train:])
    return imgs, labels


def table_for(directory):
    return {f: (sha256_of(Path(directory) / f),) for f in mnist_mod.FILES}


def check_fake(d, n_train=6, n_test=4):
    n = n_train + n_test
    assert d["x"].shape == (n, 1, 28, 28) and d["x"].dtype == np.uint8
    assert d["y"].shape == (n,) and d["y"].dtype == np.int64
    assert d["x"].min() == 0 and d["x"].max() == 255
    np.testing.assert_array_equal(d["x"][:, 0, 0, 1], np.arange(n))
    np.testing.assert_array_equal(d["y"], np.arange(n) % 10)
    np.testing.assert_array_equal(d["official_test"], np.arange(n) >= n_train)


def test_load_from_data_dir_verify_false(tmp_path):
    make_fake_dataset(tmp_path / "d")
    d = load_mnist("mnist", data_dir=tmp_path / "d", verify=False, download=False)
    check_fake(d)
    assert d["source"] == str(tmp_path / "d")


def test_data_dir_checksum_enforced(tmp_path, monkeypatch):
    make_fake_dataset(tmp_path / "d")
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz: SHA-256 mismatch"):
        load_mnist("mnist", data_dir=tmp_path / "d")
    monkeypatch.setitem(mnist_mod.CHECKSUMS, "mnist", table_for(tmp_path / "d"))
    check_fake(load_mnist("mnist", data_dir=tmp_path / "d"))


def test_data_dir_missing_file(tmp_path):
    make_fake_dataset(tmp_path / "d")
    (tmp_path / "d" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz not found in data_dir"):
        load_mnist("mnist", data_dir=tmp_path / "d", verify=False)


def test_cache_dir_then_download(tmp_path, monkeypatch):
    make_fake_dataset(tmp_path / "mirror")
    monkeypatch.setitem(mnist_mod.CHECKSUMS, "mnist", table_for(tmp_path / "mirror"))
    monkeypatch.setitem(mnist_mod.MIRRORS, "mnist", ("file:///nonexistent/", (tmp_path / "mirror").as_uri()))
    cache = tmp_path / "cache"
    d = load_mnist("mnist", cache_dir=cache)
    check_fake(d)
    assert d["source"] == str(cache / "mnist")
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(mnist_mod.FILES)
    # Second load comes from the cache, network or not.
    monkeypatch.setitem(mnist_mod.MIRRORS, "mnist", ())
    check_fake(load_mnist("mnist", cache_dir=cache, download=False))


def test_label_validation(tmp_path):
    make_fake_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 12, 3], np.uint8))
    with pytest.raises(DataError, match="label 12 out of range"):
        load_mnist("mnist", data_dir=tmp_path, verify=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 2], np.uint8))
    with pytest.raises(DataError, match="3 labels for 4 images"):
        load_mnist("mnist", data_dir=tmp_path, verify=False)


def test_image_shape_validation(tmp_path):
    make_fake_dataset(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((6, 28, 27), np.uint8))
    with pytest.raises(DataError, match=r"shape \(N, 28, 28\), got uint8 \(6, 28, 27\)"):
        load_mnist("mnist", data_dir=tmp_path, verify=False)


def test_missing_everywhere_message(tmp_path, monkeypatch):
    sysdir = tmp_path / "usr-share"
    monkeypatch.setitem(mnist_mod.SYSTEM_DIRS, "fashion-mnist", (sysdir,))
    monkeypatch.setitem(mnist_mod.MIRRORS, "fashion-mnist", ("file:///nonexistent/mirror/",))
    with pytest.raises(DataError) as ei:
        load_mnist("fashion-mnist", cache_dir=tmp_path / "cache")
    msg = str(ei.value)
    assert str(tmp_path / "cache" / "fashion-mnist") in msg and str(sysdir) in msg
    assert "file:///nonexistent/mirror/train-images-idx3-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-dir" in msg
    with pytest.raises(DataError, match="downloading disabled"):
        load_mnist("fashion-mnist", cache_dir=tmp_path / "cache", download=False)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'kmnist'; known datasets: mnist, fashion-mnist"):
        load_mnist("kmnist")


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path):
    d = load_mnist("fashion-mnist", cache_dir=tmp_path, download=False)
    assert d["source"] == str(DEBIAN_FASHION)
    assert d["x"].shape == (70000, 1, 28, 28) and d["x"].dtype == np.uint8
    assert d["x"].max() == 255
    np.testing.assert_array_equal(np.bincount(d["y"], minlength=10), [7000] * 10)
    assert d["official_test"].sum() == 10000 and not d["official_test"][:60000].any()
    parts = split_dataset(d, (5, 1, 1), seed=0)
    assert [len(parts[k][0]) for k in ("train", "val", "test")] == [50000, 10000, 10000]


# ---------------------------------------------------------------- split / batches

def test_split_sizes_paper():
    tr, va, te = split_indices(70000, (5, 1, 1), seed=0)
    assert (len(tr), len(va), len(te)) == (50000, 10000, 10000)
    allidx = np.concatenate([tr, va, te])
    np.testing.assert_array_equal(np.sort(allidx), np.arange(70000))  # disjoint and covering


def test_split_seeded():
    a = split_indices(1000, seed=3)
    b = split_indices(1000, seed=3)
    c = split_indices(1000, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("n,ratios,expected", [
    (10, (1, 1, 1), [4, 3, 3]),
    (7, (0.5, 0.25, 0.25), [3, 2, 2]),
    (11, (5, 1, 1), [8, 2, 1]),
    (0, (5, 1, 1), [0, 0, 0]),
    (5, (1,), [5]),
])
def test_split_rounding(n, ratios, expected):
    assert split_sizes(n, ratios) == expected
    assert [len(p) for p in split_indices(n, ratios)] == expected


@pytest.mark.parametrize("ratios", [(), (1, 0, 1), (1, -1), (1, float("nan")), "abc", 5])
def test_split_bad_ratios(ratios):
    with pytest.raises(ValueError, match="ratios"):
        split_indices(10, ratios)


def test_split_dataset():
    x = np.arange(70).reshape(35, 2)
    y = np.arange(35)
    parts = split_dataset({"x": x, "y": y}, (5, 1, 1), seed=1)
    assert [len(parts[k][1]) for k in ("train", "val", "test")] == [25, 5, 5]
    for px, py in parts.values():
        np.testing.assert_array_equal(px[:, 0], 2 * py)  # rows stay paired
    with pytest.raises(ValueError, match="3 ratios"):
        split_dataset({"x": x, "y": y}, (1, 1))

