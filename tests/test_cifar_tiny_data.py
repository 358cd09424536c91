"""CIFAR-10 and Tiny-ImageNet loaders on small archives written here in the official formats,
checksums, truncated archives, the paper's splits, and the crop-and-flip augmentation."""
import hashlib
import io
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from manualbp import datasets, experiments, get_backend, zoo
from manualbp.data import ChecksumError, DataError, crop_flip, random_crop_flip
from manualbp.data import cifar10 as cifar_mod
from manualbp.data import tinyimagenet as tiny_mod
from manualbp.data.cifar10 import load_cifar10, read_cifar10_archive
from manualbp.data.tinyimagenet import load_tiny_imagenet, read_tiny_imagenet_archive

CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


# --- archive writers (official layouts, tiny contents) ---------------------------------------

def cifar_records(n, seed):
    """``n`` random records: labels and images ``(n, 3, 32, 32)``, and their bytes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32)).astype(np.uint8)
    raw = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes()
    return labels, images, raw


def write_cifar_archive(path, records=3, files=None, seed=0):
    """A ``cifar-10-binary.tar.gz`` with ``records`` records per batch file (or the raw bytes
    given in ``files``); returns ``(images, labels)`` in load order."""
    files = dict(files or {})
    xs, ys = [], []
    for i, name in enumerate(CIFAR_FILES):
        if name not in files:
            labels, images, files[name] = cifar_records(records, seed + i)
            xs.append(images)
            ys.append(labels)
    with tarfile.open(path, "w:gz") as tar:
        entries = {"batches.meta.txt": b"airplane\n"} | {f: files[f] for f in files if files[f] is not None}
        for name, data in entries.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return (np.concatenate(xs) if xs else None), (np.concatenate(ys) if ys else None)


def jpeg_bytes(rgb, gray=False):
    """A 64x64 JPEG of one flat colour (decodes back almost exactly)."""
    img = Image.new("L", (64, 64), int(rgb[0])) if gray else Image.new("RGB", (64, 64), tuple(rgb))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


TINY_WNIDS = ["n02", "n01"]              # deliberately unsorted in wnids.txt


def write_tiny_archive(path, train_per_class=3, val=(("val_0.JPEG", "n02"), ("val_1.JPEG", "n01"))):
    """A ``tiny-imagenet-200.zip`` with two classes. Image colours encode (class, index); the
    first training image of ``n01`` is grayscale. Returns the expected colours and labels."""
    root = "tiny-imagenet-200"
    colours, labels = [], []
    sorted_wnids = sorted(TINY_WNIDS)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{root}/wnids.txt", "\n".join(TINY_WNIDS) + "\n")
        zf.writestr(f"{root}/words.txt", "n01\tthing\nn02\tother thing\n")
        for w in sorted_wnids:
            label = sorted_wnids.index(w)
            zf.writestr(f"{root}/train/{w}/{w}_boxes.txt", "")
            for i in range(train_per_class):
                gray = w == "n01" and i == 0
                rgb = (40 * i + 20,) * 3 if gray else (40 * i + 20, 100 + 100 * label, 60)
                zf.writestr(f"{root}/train/{w}/images/{w}_{i}.JPEG", jpeg_bytes(rgb, gray))
                colours.append(rgb)
                labels.append(label)
        lines = []
        for j, (name, w) in enumerate(val):
            rgb = (200, 30 * j, 90)
            zf.writestr(f"{root}/val/images/{name}", jpeg_bytes(rgb))
            lines.append(f"{name}\t{w}\t0\t0\t63\t63")
            colours.append(rgb)
            labels.append(sorted_wnids.index(w) if w in sorted_wnids else -1)
        zf.writestr(f"{root}/val/val_annotations.txt", "\n".join(lines) + "\n")
        zf.writestr(f"{root}/test/images/test_0.JPEG", jpeg_bytes((1, 2, 3)))
    return np.array(colours), np.array(labels)


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


# --- CIFAR-10 --------------------------------------------------------------------------------

def test_cifar10_loads_official_binary_layout(tmp_path, monkeypatch):
    path = tmp_path / "cifar-10-binary.tar.gz"
    x, y = write_cifar_archive(path, records=4)
    monkeypatch.setattr(cifar_mod, "CHECKSUMS", (sha256(path),))
    data = load_cifar10(data_dir=tmp_path)
    assert data["x"].dtype == np.uint8 and data["x"].shape == (24, 3, 32, 32)
    assert data["y"].dtype == np.int64
    np.testing.assert_array_equal(data["x"], x)
    np.testing.assert_array_equal(data["y"], y)
    np.testing.assert_array_equal(data["official_test"], np.arange(24) >= 20)
    # byte 1 of a record is the first red pixel, byte 1 + 1024 the first green one
    raw = cifar_records(4, 0)[2]
    assert data["x"][0, 0, 0, 0] == raw[1] and data["x"][0, 1, 0, 0] == raw[1 + 1024]
    assert data["x"][0, 0, 0, 1] == raw[2] and data["x"][0, 0, 1, 0] == raw[1 + 32]


def test_cifar10_checksum_mismatch(tmp_path):
    write_cifar_archive(tmp_path / "cifar-10-binary.tar.gz")
    with pytest.raises(ChecksumError, match="cifar-10-binary.tar.gz: SHA-256 mismatch: expected c4a38c50"):
        load_cifar10(data_dir=tmp_path)
    assert load_cifar10(data_dir=tmp_path, verify=False)["x"].shape == (18, 3, 32, 32)


def test_cifar10_truncated_archive(tmp_path):
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar_archive(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated or corrupt archive"):
        read_cifar10_archive(path)


def test_cifar10_gzip_crc_is_checked_without_the_checksum(tmp_path):
    """A damaged gzip trailer (its CRC-32) is refused even with ``verify=False``."""
    path = tmp_path / "cifar-10-binary.tar.gz"
    write_cifar_archive(path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF                                          # first byte of the CRC-32 trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated or corrupt archive"):
        load_cifar10(data_dir=tmp_path, verify=False)


def test_cifar10_extracted_folder_is_accepted(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    xs, ys = [], []
    for i, name in enumerate(CIFAR_FILES):
        labels, images, raw = cifar_records(2, i)
        (folder / name).write_bytes(raw)
        xs.append(images)
        ys.append(labels)
    for data_dir in (tmp_path, folder):
        data = load_cifar10(data_dir=data_dir)
        np.testing.assert_array_equal(data["x"], np.concatenate(xs))
        np.testing.assert_array_equal(data["y"], np.concatenate(ys))
        assert data["source"] == str(folder)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match="data_batch_3.bin not found in the folder"):
        load_cifar10(data_dir=tmp_path)


def test_cifar10_bad_contents(tmp_path):
    path = tmp_path / "a.tar.gz"
    raw = cifar_records(3, 0)[2]
    write_cifar_archive(path, files={"data_batch_2.bin": raw[:-5]})
    with pytest.raises(DataError, match=r"data_batch_2.bin: 9214 bytes is not a whole, non-zero number of 3073-byte"):
        read_cifar10_archive(path)
    write_cifar_archive(path, files={"test_batch.bin": None})
    with pytest.raises(DataError, match="test_batch.bin not found in the archive"):
        read_cifar10_archive(path)
    write_cifar_archive(path, files={"data_batch_5.bin": cifar_records(2, 0)[2]})
    with pytest.raises(DataError, match="different numbers of records"):
        read_cifar10_archive(path)
    bad = bytearray(raw)
    bad[0] = 10
    write_cifar_archive(path, files={"data_batch_1.bin": bytes(bad)})
    with pytest.raises(DataError, match="label 10 out of range, expected 0..9"):
        read_cifar10_archive(path)


def test_cifar10_locating(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="cifar-10-binary.tar.gz not found in data_dir"):
        load_cifar10(data_dir=tmp_path)
    with pytest.raises(DataError, match="downloading is disabled"):
        load_cifar10(cache_dir=tmp_path / "cache", download=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    x, _ = write_cifar_archive(mirror / "cifar-10-binary.tar.gz")
    monkeypatch.setattr(cifar_mod, "MIRRORS", (mirror.as_uri() + "/",))
    monkeypatch.setattr(cifar_mod, "CHECKSUMS", (sha256(mirror / "cifar-10-binary.tar.gz"),))
    data = load_cifar10(cache_dir=tmp_path / "cache")           # verified download into the cache
    assert (tmp_path / "cache" / "cifar10" / "cifar-10-binary.tar.gz").is_file()
    np.testing.assert_array_equal(data["x"], x)


def test_cifar10_paper_split(tmp_path, monkeypatch):
    """4:1:1 of all images, in [0, 1] in the backend's dtype."""
    path = tmp_path / "cifar-10-binary.tar.gz"
    x, y = write_cifar_archive(path, records=5)                 # 30 images -> 20 / 5 / 5
    monkeypatch.setattr(cifar_mod, "CHECKSUMS", (sha256(path),))
    splits = datasets.load_splits(get_backend("numpy", "float32"), "cifar10", tmp_path, seed=3)
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 20, "val": 5, "test": 5}
    xs = np.concatenate([v[0] for v in splits.values()])
    assert xs.dtype == np.float32 and xs.shape[1:] == (3, 32, 32)
    assert xs.min() >= 0 and xs.max() <= 1
    np.testing.assert_allclose(np.sort(xs.ravel()), np.sort(x.ravel() / np.float32(255)), rtol=1e-6)
    again = datasets.load_splits(get_backend("numpy", "float32"), "cifar10", tmp_path, seed=3)
    np.testing.assert_array_equal(again["val"][1], splits["val"][1])


# --- Tiny-ImageNet ---------------------------------------------------------------------------

def test_tiny_imagenet_decodes_archive(tmp_path, monkeypatch):
    path = tmp_path / "tiny-imagenet-200.zip"
    colours, labels = write_tiny_archive(path)
    monkeypatch.setattr(tiny_mod, "CHECKSUMS", (md5(path),))
    data = load_tiny_imagenet(data_dir=tmp_path)
    assert data["x"].dtype == np.uint8 and data["x"].shape == (8, 3, 64, 64)
    np.testing.assert_array_equal(data["y"], labels)
    np.testing.assert_array_equal(data["official_val"], np.arange(8) >= 6)
    assert list(data["wnids"]) == ["n01", "n02"]
    mean_colour = data["x"].mean(axis=(2, 3))
    np.testing.assert_allclose(mean_colour, colours, atol=3)     # flat JPEGs decode almost exactly
    gray = data["x"][0]
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()   # grayscale -> RGB


def test_tiny_imagenet_cache(tmp_path, monkeypatch):
    path = tmp_path / "tiny-imagenet-200.zip"
    write_tiny_archive(path)
    first = load_tiny_imagenet(data_dir=tmp_path, verify=False)
    assert (tmp_path / "tiny-imagenet-200.npz").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]

    def no_decode(_):
        raise AssertionError("decoded again although the cache is valid")
    monkeypatch.setattr(tiny_mod, "read_tiny_imagenet_archive", no_decode)
    second = load_tiny_imagenet(data_dir=tmp_path, verify=False)
    for key in ("x", "y", "official_val", "wnids"):
        np.testing.assert_array_equal(first[key], second[key])
    monkeypatch.undo()
    write_tiny_archive(path, train_per_class=2)                  # another archive: decoded afresh
    assert load_tiny_imagenet(data_dir=tmp_path, verify=False)["x"].shape == (6, 3, 64, 64)


def test_tiny_imagenet_damaged_or_rewritten_cache_is_decoded_again(tmp_path, monkeypatch):
    path = tmp_path / "tiny-imagenet-200.zip"
    write_tiny_archive(path)
    first = load_tiny_imagenet(data_dir=tmp_path, verify=False)
    cache = tmp_path / "tiny-imagenet-200.npz"
    decoded = []
    monkeypatch.setattr(tiny_mod, "read_tiny_imagenet_archive",
                        lambda p, read=tiny_mod.read_tiny_imagenet_archive: decoded.append(p) or read(p))
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 0xFF                              # a flipped byte
    cache.write_bytes(bytes(data))
    np.testing.assert_array_equal(load_tiny_imagenet(data_dir=tmp_path, verify=False)["x"], first["x"])
    with np.load(cache) as z:                                 # rewritten, with the right key
        arrays = {k: z[k] for k in z.files}
    arrays["x"] = arrays["x"].copy()
    arrays["x"][0, 0, 0, 0] ^= 1
    np.savez(cache, **arrays)
    np.testing.assert_array_equal(load_tiny_imagenet(data_dir=tmp_path, verify=False)["x"], first["x"])
    assert len(decoded) == 2
    load_tiny_imagenet(data_dir=tmp_path, verify=False)       # a sound cache is used as it is
    assert len(decoded) == 2


def test_tiny_imagenet_checksum_and_corruption(tmp_path):
    path = tmp_path / "tiny-imagenet-200.zip"
    write_tiny_archive(path)
    with pytest.raises(ChecksumError, match="tiny-imagenet-200.zip: MD5 mismatch: expected 90528d7c"):
        load_tiny_imagenet(data_dir=tmp_path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(DataError, match="truncated or corrupt archive"):
        read_tiny_imagenet_archive(path)


def test_tiny_imagenet_bad_annotations(tmp_path):
    path = tmp_path / "t.zip"
    write_tiny_archive(path, val=(("val_0.JPEG", "n99"),))
    with pytest.raises(DataError, match="bad line in val_annotations.txt"):
        read_tiny_imagenet_archive(path)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("tiny-imagenet-200/wnids.txt", "n01\n")
    with pytest.raises(DataError, match="no training images for 1 classes"):
        read_tiny_imagenet_archive(path)


def test_tiny_imagenet_paper_split(tmp_path, monkeypatch):
    path = tmp_path / "tiny-imagenet-200.zip"
    write_tiny_archive(path, train_per_class=8, val=[(f"val_{i}.JPEG", "n01") for i in range(8)])
    monkeypatch.setattr(tiny_mod, "CHECKSUMS", (md5(path),))
    splits = datasets.load_splits(get_backend("numpy", "float32"), "tiny-imagenet", tmp_path)
    assert {k: len(v[1]) for k, v in splits.items()} == {"train": 20, "val": 2, "test": 2}
    assert splits["train"][0].shape[1:] == (3, 64, 64) and splits["train"][0].dtype == np.float32


# --- augmentation ----------------------------------------------------------------------------

def test_crop_flip_by_hand():
    """A 1x1x2x3 image, padding 1: hand-computed crops and flips."""
    x = np.array([[[[1, 2, 3], [4, 5, 6]]]], dtype=np.float32)
    x2 = np.concatenate([x, x])
    same = crop_flip(x2, np.array([1, 1]), np.array([1, 1]), np.array([False, False]), 1, np)
    np.testing.assert_array_equal(same, x2)
    out = crop_flip(x2, np.array([0, 2]), np.array([2, 0]), np.array([False, True]), 1, np)
    # sample 0: one row down and one column left of the image -> zeros on top and on the right
    np.testing.assert_array_equal(out[0, 0], [[0, 0, 0], [2, 3, 0]])
    # sample 1: one row up and one column right -> [[0, 4, 5], [0, 0, 0]], then mirrored
    np.testing.assert_array_equal(out[1, 0], [[5, 4, 0], [0, 0, 0]])


def test_random_crop_flip_shape_seed_and_content(bk32):
    bk = bk32
    x = bk.asarray(np.random.default_rng(0).random((64, 3, 8, 8)))
    bk.seed(5)
    a = random_crop_flip(x, bk)
    bk.seed(5)
    b = random_crop_flip(x, bk)
    bk.seed(6)
    c = random_crop_flip(x, bk)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(bk.to_host(a), bk.to_host(b))
    assert not np.array_equal(bk.to_host(a), bk.to_host(c))
    # every output is a shifted (and maybe mirrored) window of its own input
    xh, ah = bk.to_host(x), bk.to_host(a)
    padded = np.pad(xh, ((0, 0), (0, 0), (4, 4), (4, 4)))
    flips = 0
    for n in range(len(xh)):
        windows = [(padded[n, :, i:i + 8, j:j + 8], f) for i in range(9) for j in range(9) for f in (0, 1)]
        hits = [f for w, f in windows if np.array_equal(w[..., ::-1] if f else w, ah[n])]
        assert hits, f"sample {n} is not a crop of its input"
        flips += hits[0]
    assert 10 < flips < 54
    bk.seed(5)
    unflipped = bk.to_host(random_crop_flip(x, bk, padding=0, flip=False))
    np.testing.assert_array_equal(unflipped, xh)


def test_random_crop_flip_rejects_non_images(bk32):
    with pytest.raises(ValueError, match=r"expects images \(N, C, H, W\), got shape \(4, 12\)"):
        random_crop_flip(bk32.zeros((4, 12)), bk32)


# --- the example scripts, end to end on small archives ------------------------------------------

@pytest.mark.parametrize("example, dataset, variant, backend", [
    ("cifar10_resnet18", "cifar10", "all", "numpy"), ("tinyimagenet_resnet34", "tiny-imagenet", "resnet34-an", "numpy"),
    pytest.param("cifar10_resnet18", "cifar10", "resnet18-an", "cupy", marks=pytest.mark.cupy_api, id="cifar10-cupy-api"),
    pytest.param("tinyimagenet_resnet34", "tiny-imagenet", "resnet34-an", "cupy", marks=pytest.mark.cupy_api,
                 id="tiny-imagenet-cupy-api")])
def test_example_smoke(request, tmp_path, monkeypatch, load_example, example, dataset, variant, backend):
    """Each example, one epoch of at most 2 batches of a base-width-4 ResNet on random-looking
    images; with ``--backend cupy`` on the CuPy stand-in too (CuPy API conformance, not a GPU)."""
    import json
    if backend == "cupy":
        request.getfixturevalue("cupy_standin")
    data = tmp_path / "data"
    data.mkdir()
    if dataset == "cifar10":
        write_cifar_archive(data / "cifar-10-binary.tar.gz", records=8)
        monkeypatch.setattr(cifar_mod, "CHECKSUMS", (sha256(data / "cifar-10-binary.tar.gz"),))
    else:
        write_tiny_archive(data / "tiny-imagenet-200.zip", train_per_class=6)
        monkeypatch.setattr(tiny_mod, "CHECKSUMS", (md5(data / "tiny-imagenet-200.zip"),))
    out = tmp_path / "out"
    metrics = load_example(example).main([
        "--data-dir", str(data), "--epochs", "1", "--limit-batches", "2", "--batch-size", "8",
        "--width", "4", "--variant", variant, "--out", str(out), "--no-progress",
        "--limit-eval", "3", "--eval-batch-size", "2", "--backend", backend])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["dataset"] == dataset and saved["epochs"] == 1
    limited = 3 if dataset == "cifar10" else 1                  # --limit-eval 3; Tiny: 12 / 1 / 1
    assert saved["split_sizes"]["val"] == saved["split_sizes"]["test"] == limited
    names = [r["variant"] for r in saved["results"]]
    assert names == ([f"resnet18{s}" for s in ("", "-mlp+", "-a+", "-mlpn", "-an")]
                     if variant == "all" else [variant])
    for r in saved["results"]:
        assert 0 <= r["test_accuracy_noise_off"] <= 1 and len(r["history"]) == 1
    assert metrics["results"][-1]["eval_noise_default"] is False


def test_example_presets_follow_table_1():
    parse = {}
    for family, dataset in (("resnet18", "cifar10"), ("resnet34", "tiny-imagenet")):
        parse[dataset] = vars(experiments.parser(zoo.get_family(family)).parse_args([]))
    c, t = parse["cifar10"], parse["tiny-imagenet"]
    assert (c["optimizer"], c["lr"], c["weight_decay"], c["epochs"], c["batch_size"], c["decay_every"]) == \
        ("adam", 1e-3, 1e-4, 50, 128, None)
    assert (t["optimizer"], t["lr"], t["momentum"], t["weight_decay"], t["epochs"], t["batch_size"],
            t["decay_every"], t["decay_gamma"]) == ("sgd", 1e-2, 0.9, 5e-4, 80, 128, 20, 0.8)
