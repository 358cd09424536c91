"""The training scripts' ``--input-noise`` (Gaussian data augmentation for input smoothing):
applied, recorded in the checkpoint and refused on resume with another value."""
from types import SimpleNamespace

import pytest

from manualbp import checkpoint, experiments, get_backend
from manualbp.checkpoint import CheckpointError
from manualbp.data import random_crop_flip


# --- the training scripts' --input-noise --------------------------------------------------------------

def train(out, *flags):
    return experiments.main("mlp", ["--variant", "mlpn", "--activation", "relu", "--epochs", "1", "--batch-size",
                                    "32", "--out", str(out), "--no-progress", *flags])


def test_input_noise_is_recorded_and_refused_on_resume_with_another_value(tmp_path, tiny_mnist):
    plain = train(tmp_path / "plain")["results"][0]
    assert plain["training"]["input_noise"] == 0.0
    noisy = train(tmp_path, "--input-noise", "0.25")["results"][0]
    assert noisy["training"]["input_noise"] == 0.25
    assert noisy["history"][0]["train_loss"] != plain["history"][0]["train_loss"]    # the batches were noisy
    assert checkpoint.load_meta(str(tmp_path / "checkpoints" / "mlpn-relu.npz"))["settings"]["input_noise"] == 0.25
    for flags, value in (([], "0.0"), (["--input-noise", "0.5"], "0.5")):
        with pytest.raises(CheckpointError, match=f"input_noise=0.25, this run has input_noise={value}"):
            train(tmp_path, "--resume", "--epochs", "2", *flags)
    assert len(train(tmp_path, "--resume", "--epochs", "2", "--input-noise", "0.25")["results"][0]["history"]) == 2


@pytest.mark.parametrize("flags, words", [
    (["--input-noise", "-1"], "--input-noise -1.0: expected a non-negative finite number"),
    (["--input-noise", "inf"], "--input-noise inf: expected a non-negative finite number"),
    (["--input-noise", "a lot"], "--input-noise 'a lot': expected a non-negative finite number"),
])
def test_a_bad_input_noise_is_refused_before_any_work(tmp_path, tiny_mnist, flags, words):
    with pytest.raises(experiments.SettingError, match=words):
        train(tmp_path, *flags)
    assert tiny_mnist == []


@pytest.mark.parametrize("crop", [False, True])
def test_input_noise_adds_scaled_backend_draws_after_the_datasets_own_augmentation(crop):
    augment = experiments.training_augment(SimpleNamespace(augment=crop, input_noise=0.5))
    x = get_backend("numpy", "float64", 0).uniform(0, 1, (6, 3, 8, 8))
    bk, reference = get_backend("numpy", "float64", 7), get_backend("numpy", "float64", 7)
    expected = random_crop_flip(x, reference) if crop else x
    assert (augment(x, bk) == expected + 0.5 * reference.normal(x.shape)).all()
    assert experiments.training_augment(SimpleNamespace(augment=crop, input_noise=0.0)) is (
        random_crop_flip if crop else None)
    assert experiments.training_augment(SimpleNamespace()) is None       # a script without the flags
