"""The training loop: same seed same run, exact resumption from checkpoints, refusal of damaged
or mismatched checkpoints, and (slow) one epoch on the real Fashion-MNIST."""
import hashlib
import json
import zipfile

import numpy as np
import pytest

from manualbp import get_backend
from manualbp.checkpoint import CheckpointError
from manualbp.checkpoint import load as load_checkpoint
from manualbp.checkpoint import save as save_checkpoint
from manualbp.data import split_dataset
from manualbp.optim import Adam, StepLR, is_noise_level, noise_level_optimizer
from manualbp.train import OPTIMIZER_SETTINGS, Trainer, make_optimizers
from manualbp.zoo import mlp

SIZES = (10, 16, 8, 3)


def synthetic(n=420, seed=0):
    """Three Gaussian blobs in 10 dimensions, split 5:1:1 like the paper's data."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (SIZES[-1], SIZES[0]))
    y = rng.integers(0, SIZES[-1], n)
    x = (centers[y] + rng.normal(0, 1, (n, SIZES[0]))).astype(np.float32)
    return split_dataset({"x": x, "y": y}, (5, 1, 1), seed=0)


SPLITS = synthetic()


def make_trainer(seed=0, init_seed=0, variant="mlpn", batch_size=32, schedule=False):
    bk = get_backend("numpy", "float32", init_seed)
    model = mlp(bk, variant, "relu", sizes=SIZES)
    optimizers = [Adam(model, lr=1e-2, weight_decay=1e-4, select=lambda n: not is_noise_level(n)),
                  noise_level_optimizer(model, lr=1e-2)]
    sched = StepLR(optimizers, step_size=1, gamma=0.5) if schedule else None
    return Trainer(model, optimizers, schedule=sched, batch_size=batch_size, seed=seed, progress=False)


def without_time(history):
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def params_of(trainer):
    return {k: np.array(v) for k, v in trainer.model.named_parameters().items()}


def optimizer_states(trainer):
    return [{k: (np.array(v) if hasattr(v, "shape") else v) for k, v in o.state_dict().items()}
            for o in trainer.optimizers]


def assert_same_params(a, b):
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# --- reproducibility ------------------------------------------------------------------------------

def test_same_seed_same_run():
    first, second = make_trainer(seed=3), make_trainer(seed=3)
    h1 = first.fit(SPLITS, 2, log=None)
    h2 = second.fit(SPLITS, 2, log=None)
    assert len(h1) == 2 and [r["epoch"] for r in h1] == [1, 2]
    assert without_time(h1) == without_time(h2)
    assert_same_params(params_of(first), params_of(second))
    # it learned something, and sigma moved away from 1 while staying >= 0
    assert h1[-1]["val_accuracy"] > 0.6 and h1[-1]["train_loss"] < h1[0]["train_loss"] + 0.5
    sigma = params_of(first)["fc1.noise.sigma"]
    assert (sigma >= 0).all() and np.abs(sigma - 1).max() > 1e-3
    assert set(h1[-1]["sigma"]) == {"fc1.noise", "fc2.noise"}


def test_different_seed_differs():
    a, b = make_trainer(seed=3), make_trainer(seed=4)
    a.fit(SPLITS, 1, log=None)
    b.fit(SPLITS, 1, log=None)
    pa, pb = params_of(a), params_of(b)
    assert all(not np.array_equal(pa[k], pb[k]) for k in pa)
    assert a.history[0]["train_loss"] != b.history[0]["train_loss"]


def test_fit_logs_one_line_per_epoch():
    lines = []
    make_trainer().fit(SPLITS, 2, log=lines.append)
    assert len(lines) == 2 and lines[0].startswith("epoch   1/2") and "val acc" in lines[1]


@pytest.mark.parametrize("limit", [-1, 0, 1.5, float("nan")])
def test_a_limit_of_batches_that_is_not_a_positive_integer_is_refused(limit):
    """-1 once divided by zero at the end of the epoch; 0 trained every batch."""
    with pytest.raises(ValueError, match=rf"^limit_batches must be a positive integer, got {limit!r}$"):
        Trainer(make_trainer().model, [], limit_batches=limit)


def test_a_limit_of_batches_stops_the_epoch():
    trainer = Trainer(make_trainer().model, [], batch_size=32, limit_batches=2)
    assert len(trainer.batches(300)) == 2 and len(Trainer(trainer.model, [], batch_size=32).batches(300)) == 10


def test_make_optimizers_refuses_settings_it_does_not_know():
    model = make_trainer().model
    with pytest.raises(ValueError) as refused:
        make_optimizers(model, lr=1e-2, epochs=3, learning_rate=1e-2)
    assert str(refused.value) == ("make_optimizers: unknown setting(s) 'epochs', 'learning_rate': expected "
                                  "optimizer, lr, weight_decay, momentum, decay_every, decay_gamma, sigma_lr, sigma_update")
    assert OPTIMIZER_SETTINGS == ("optimizer", "lr", "weight_decay", "momentum", "decay_every", "decay_gamma",
                                  "sigma_lr", "sigma_update")


# --- checkpoints and resumption -------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [False, True])
def test_resume_is_exact(tmp_path, schedule):
    path = tmp_path / "run" / "checkpoint.npz"
    straight = make_trainer(seed=7, schedule=schedule)
    straight.fit(SPLITS, 3, log=None)

    interrupted = make_trainer(seed=7, schedule=schedule)
    interrupted.fit(SPLITS, 2, checkpoint_path=str(path), log=None)
    assert path.exists() and not list(path.parent.glob(".tmp-*"))       # atomic write, no leftovers

    # a new process: new model (other initial weights), new optimisers, resume to epoch 3
    resumed = make_trainer(seed=7, init_seed=99, schedule=schedule)
    assert not np.array_equal(params_of(resumed)["fc1.weight"], params_of(straight)["fc1.weight"])
    history = resumed.fit(SPLITS, 3, checkpoint_path=str(path), resume=True, log=None)

    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert without_time(history) == without_time(straight.history)
    assert_same_params(params_of(resumed), params_of(straight))
    for a, b in zip(optimizer_states(resumed), optimizer_states(straight)):
        assert a.keys() == b.keys() and a["t"] == b["t"] and a["lr"] == b["lr"]
        for k in a.keys() - {"t", "lr"}:
            np.testing.assert_array_equal(a[k], b[k])
    assert json.loads(json.dumps(history)) == history                   # history stays JSON-able


def test_resume_without_checkpoint_starts_fresh(tmp_path):
    path = tmp_path / "none.npz"
    fresh, reference = make_trainer(seed=2), make_trainer(seed=2)
    fresh.fit(SPLITS, 1, checkpoint_path=str(path), resume=True, log=None)
    reference.fit(SPLITS, 1, log=None)
    assert_same_params(params_of(fresh), params_of(reference))
    assert path.exists()


def test_resume_of_finished_run_trains_nothing(tmp_path):
    path = str(tmp_path / "c.npz")
    done = make_trainer(seed=1)
    done.fit(SPLITS, 2, checkpoint_path=path, log=None)
    again = make_trainer(seed=1, init_seed=5)
    again.fit(SPLITS, 2, checkpoint_path=path, resume=True, log=None)
    assert without_time(again.history) == without_time(done.history)
    assert_same_params(params_of(again), params_of(done))


def test_resume_for_fewer_epochs_than_the_checkpoint_holds_is_refused(tmp_path):
    path = tmp_path / "c.npz"
    make_trainer(seed=1).fit(SPLITS, 2, checkpoint_path=str(path), log=None)
    written = path.read_bytes()
    again = make_trainer(seed=1, init_seed=5)
    before = params_of(again)
    with pytest.raises(CheckpointError, match="already holds 2 epochs, more than the 1 asked for"):
        again.fit(SPLITS, 1, checkpoint_path=str(path), resume=True, log=None)
    assert again.history == [] and path.read_bytes() == written
    assert_same_params(params_of(again), before)                         # refused before loading anything


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.npz"
    make_trainer(seed=0).fit(SPLITS, 1, checkpoint_path=str(path), log=None)
    return path.read_bytes()


def write(tmp_path, data, name="damaged.npz"):
    path = tmp_path / name
    path.write_bytes(bytes(data))
    return str(path)


def test_good_checkpoint_loads(tmp_path, checkpoint_bytes):
    trainer = make_trainer(seed=0, init_seed=3)
    assert trainer.load(write(tmp_path, checkpoint_bytes, "good.npz")) == 1
    assert len(trainer.history) == 1 and trainer.optimizers[0].t > 0


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_truncated_checkpoint_refused(tmp_path, checkpoint_bytes, keep):
    path = write(tmp_path, checkpoint_bytes[:int(len(checkpoint_bytes) * keep)])
    with pytest.raises(CheckpointError):
        make_trainer(seed=0).load(path)


def test_flipped_byte_in_the_middle_refused(tmp_path, checkpoint_bytes):
    data = bytearray(checkpoint_bytes)
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(CheckpointError):
        make_trainer(seed=0).load(write(tmp_path, data))


def test_no_flipped_byte_gives_silently_different_state(tmp_path, checkpoint_bytes):
    """Flip bytes all over the file: each load is refused with CheckpointError, or (a byte the
    format never reads, e.g. a zip timestamp) returns exactly the original arrays and metadata."""
    good_arrays, good_meta = load_checkpoint(write(tmp_path, checkpoint_bytes, "good.npz"))
    refused = 0
    # bytes spread over the file, and every byte of the zip headers (a local file header, a
    # central directory entry, the end record): flags, compression method, version, sizes ...
    raw = checkpoint_bytes
    local = raw.index(b"PK\x03\x04", len(raw) // 3)        # a local file header mid-file
    central = raw.index(b"PK\x01\x02")                       # the first central directory entry
    end = raw.rindex(b"PK\x05\x06")                          # the end-of-directory record
    header_bytes = [*range(local, local + 30), *range(central, central + 46), *range(end, end + 22)]
    positions = np.unique(np.concatenate([np.linspace(0, len(raw) - 1, 150).astype(int), header_bytes]))
    for pos in positions:
        data = bytearray(checkpoint_bytes)
        data[pos] ^= 0x5A
        try:
            arrays, meta = load_checkpoint(write(tmp_path, data))
        except CheckpointError:
            refused += 1
            continue
        assert meta == good_meta, f"byte {pos}"
        assert arrays.keys() == good_arrays.keys(), f"byte {pos}"
        for k in arrays:
            np.testing.assert_array_equal(arrays[k], good_arrays[k], err_msg=f"byte {pos}")
    assert refused > 0.6 * len(positions)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10,
                                     bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))],
                         ids=["empty", "text", "random"])
def test_non_zip_file_refused(tmp_path, content):
    with pytest.raises(CheckpointError):
        make_trainer(seed=0).load(write(tmp_path, content))


def test_missing_checkpoint_refused(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        make_trainer(seed=0).load(str(tmp_path / "absent.npz"))


def test_zip_without_metadata_refused(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(str(path))


def test_tampered_array_fails_checksum(tmp_path, checkpoint_bytes):
    arrays, meta = load_checkpoint(write(tmp_path, checkpoint_bytes, "good.npz"))
    digests = json.loads(bytes(np.load(write(tmp_path, checkpoint_bytes, "g2.npz"))["meta.json"]))["sha256"]
    path = tmp_path / "tampered.npz"
    arrays["model/fc1.bias"] = arrays["model/fc1.bias"] + np.float32(1e-3)
    payload = dict(arrays)
    text = json.dumps(dict(meta, sha256=digests)).encode()
    payload["meta.json"] = np.frombuffer(text, dtype=np.uint8)
    payload["meta.sha256"] = np.frombuffer(hashlib.sha256(text).hexdigest().encode(), dtype=np.uint8)
    np.savez(path, **payload)
    with pytest.raises(CheckpointError, match="fc1.bias"):
        load_checkpoint(str(path))


def test_edited_metadata_fails_its_checksum(tmp_path, checkpoint_bytes):
    """An edited ``meta.json`` (a setting changed by hand) is refused: the archive records its
    SHA-256 too."""
    archive = np.load(write(tmp_path, checkpoint_bytes, "good.npz"))
    payload = {k: archive[k] for k in archive.files}
    meta = json.loads(bytes(payload["meta.json"]))
    meta["settings"]["batch_size"] = 64
    payload["meta.json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(tmp_path / "edited.npz", **payload)
    with pytest.raises(CheckpointError, match="meta.json fails its SHA-256 check"):
        load_checkpoint(str(tmp_path / "edited.npz"))


def test_object_array_refused_without_unpickling(tmp_path, monkeypatch):
    """Checkpoints are read with allow_pickle=False: a file holding an object array is refused
    and nothing in it is unpickled."""
    path = tmp_path / "pickled.npz"
    save_checkpoint(str(path), {"model/fc1.bias": np.zeros(3, dtype=np.float32)}, {"epochs_done": 0})
    with zipfile.ZipFile(path, "a") as archive:               # smuggle in an object array
        with archive.open("evil.npy", "w") as f:
            np.lib.format.write_array(f, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    calls = []
    original = np.load
    monkeypatch.setattr(np, "load", lambda *a, **kw: calls.append(kw) or original(*a, **kw))
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load_checkpoint(str(path))
    assert calls and all(kw.get("allow_pickle") is False for kw in calls)


@pytest.mark.parametrize("change, words", [
    ({"seed": 1}, "seed"),
    ({"batch_size": 16}, "batch_size"),
])
def test_resume_with_other_settings_refused(tmp_path, checkpoint_bytes, change, words):
    path = write(tmp_path, checkpoint_bytes, "good.npz")
    trainer = make_trainer(**{"seed": 0, **change})
    with pytest.raises(CheckpointError, match=words):
        trainer.fit(SPLITS, 2, checkpoint_path=path, resume=True, log=None)
    assert trainer.history == []


def test_resume_into_other_model_refused(tmp_path, checkpoint_bytes):
    path = write(tmp_path, checkpoint_bytes, "good.npz")
    plain = make_trainer(seed=0, variant="mlp")                # no noise: one optimiser, no sigma
    with pytest.raises(CheckpointError, match="optimis"):
        plain.load(path)
    bk = get_backend("numpy", "float32", 0)
    other = mlp(bk, "mlpn", "relu", sizes=(10, 12, 8, 3))
    optimizers = [Adam(other, select=lambda n: not is_noise_level(n)), noise_level_optimizer(other)]
    trainer = Trainer(other, optimizers, batch_size=32, seed=0, progress=False)
    with pytest.raises(CheckpointError, match="fc1"):
        trainer.load(path)


# --- real data (slow) -------------------------------------------------------------------------------

def test_missing_data_skips_or_fails_when_required(requirements, monkeypatch, tmp_path):
    """The ``fashion_mnist`` fixture skips without the files, but fails under
    MANUALBP_REQUIRE_DATA=1 (CI); it never downloads."""
    from manualbp.data import mnist as mnist_module
    monkeypatch.setenv("MANUALBP_DATA", str(tmp_path / "cache"))
    monkeypatch.setitem(mnist_module.SYSTEM_DIRS, "fashion-mnist", (tmp_path / "system",))
    monkeypatch.setattr(mnist_module, "fetch", lambda *a, **k: pytest.fail("tried to download"))
    monkeypatch.delenv("MANUALBP_REQUIRE_DATA", raising=False)
    monkeypatch.delenv("MANUALBP_STRICT", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Fashion-MNIST not found"):
        requirements.fashion_mnist()
    monkeypatch.setenv("MANUALBP_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="MANUALBP_REQUIRE_DATA=1"):
        requirements.fashion_mnist()
    assert str(requirements.fashion_mnist_dir) == "/usr/share/datasets/fashion-mnist"


@pytest.fixture(scope="module")
def fashion_splits(fashion_mnist):
    """The paper's 5:1:1 split of all 70,000 Fashion-MNIST images (host uint8 images)."""
    splits = split_dataset(fashion_mnist, (5, 1, 1), seed=0)
    assert [len(splits[k][0]) for k in ("train", "val", "test")] == [50000, 10000, 10000]
    return splits


def one_epoch(splits, variant):
    from manualbp.datasets import pixels
    bk = get_backend("numpy", "float32", 0)
    splits = {k: (pixels(bk, x), bk.asarray(y, dtype="int64")) for k, (x, y) in splits.items()}
    model = mlp(bk, variant, "relu", input_shape=(1, 28, 28))
    optimizers = [Adam(model, lr=1e-3, weight_decay=1e-4, select=lambda n: not is_noise_level(n)),
                  noise_level_optimizer(model, lr=1e-3)]
    trainer = Trainer(model, optimizers, batch_size=128, seed=0, progress=False)
    history = trainer.fit(splits, 1, log=None)
    return trainer, history[-1]


@pytest.mark.slow
def test_mlp_one_epoch_fashion_mnist(fashion_splits):
    trainer, record = one_epoch(fashion_splits, "mlp")
    assert len(trainer.optimizers) == 1
    assert record["test_accuracy"] >= 0.80, record
    assert record["val_accuracy"] >= 0.80, record


@pytest.mark.slow
def test_mlpn_one_epoch_fashion_mnist(fashion_splits):
    trainer, record = one_epoch(fashion_splits, "mlpn")
    assert record["test_accuracy"] >= 0.78, record
    sigmas = {k: v for k, v in trainer.model.named_parameters().items() if is_noise_level(k)}
    assert list(sigmas) == ["fc1.noise.sigma", "fc2.noise.sigma"]
    for name, sigma in sigmas.items():
        assert (sigma >= 0).all(), name
        assert np.abs(sigma - 1.0).max() > 1e-2, f"{name} did not move from its initial 1.0"
    assert record["sigma"]["fc1.noise"]["mean"] != 1.0


def test_a_checkpoint_from_before_a_later_setting_resumes_with_its_old_value():
    """Checkpoints written before ``input_noise`` existed record none: they were trained without
    input noise, so a run with ``input_noise=0`` resumes them and one with noise is refused."""
    from manualbp.checkpoint import CheckpointError
    from manualbp.trainer_state import check_settings
    old = {"seed": 0, "dataset": "fashion-mnist"}
    check_settings("old.npz", old, {"seed": 0, "dataset": "fashion-mnist", "input_noise": 0.0})
    with pytest.raises(CheckpointError, match="input_noise=0.0, this run has input_noise=0.25"):
        check_settings("old.npz", old, {"seed": 0, "dataset": "fashion-mnist", "input_noise": 0.25})
