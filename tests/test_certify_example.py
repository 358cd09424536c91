"""examples/certify.py end to end: what it writes, that every number of certify.json recomputes
from its per-image fields, bad input refused in one line before any work; and the training
scripts' ``--input-noise`` (Gaussian data augmentation for input smoothing): applied, recorded
in the checkpoint and refused on resume with another value."""
import csv
import json
import math
import shutil
import subprocess
import sys
from statistics import NormalDist
from types import SimpleNamespace

import matplotlib.image
import pytest
from scipy.stats import beta

from conftest import ROOT, checkout_env

from manualbp import checkpoint, experiments, get_backend, plots
from manualbp.checkpoint import CheckpointError
from manualbp.data import random_crop_flip

SCRIPT = ROOT / "examples" / "certify.py"
QUICK = ["--dataset", "fashion-mnist", "--epochs", "1", "--limit-batches", "50", "--limit-eval", "3",
         "--n0", "10", "--n", "200", "--no-progress"]
RADII = ["0", "0.25", "0.5", "0.75", "1.0"]
MODEL_KEYS = {"name", "variant", "activation", "checkpoint", "obtained", "input_noise", "smoothing", "scale",
              "prefix_norm", "bound", "n0", "n", "alpha", "clean_accuracy", "abstain_rate", "certified_accuracy",
              "seconds", "seconds_per_image", "images"}
IMAGE_KEYS = {"index", "label", "prediction", "count", "n", "p_lower", "radius"}


def script(*flags):
    return subprocess.run([sys.executable, str(SCRIPT), *flags], capture_output=True, text=True, cwd=ROOT,
                          env=checkout_env())


@pytest.fixture(scope="module")
def certified(tmp_path_factory, fashion_mnist):
    """One real run: the ReLU MLPs trained on Fashion-MNIST for 50 batches (enough for certificates
    that are not abstentions), each certified through its first noise layer on 3 test images."""
    out = tmp_path_factory.mktemp("certify")
    done = script(*QUICK, "--activation", "relu", "--out", str(out))
    assert done.returncode == 0, done.stderr
    return out, done.stdout


def clopper_pearson(k, m):
    return [0.0 if k == 0 else beta.ppf(0.025, k, m - k + 1), 1.0 if k == m else beta.ppf(0.975, k + 1, m - k)]


def check_recomputes(entry):
    """Every number of a model's entry from its per-image fields alone."""
    images, m = entry["images"], len(entry["images"])
    for im in images:
        assert set(im) == IMAGE_KEYS and im["n"] == entry["n"]
        assert im["p_lower"] == pytest.approx(0.0 if im["count"] == 0 else
                                              beta.ppf(entry["alpha"], im["count"], im["n"] - im["count"] + 1))
        assert (im["prediction"] is None) == (im["p_lower"] < 0.5)
        norm = entry["prefix_norm"]                           # null: infinite (a neuron without noise)
        expected = 0.0 if im["prediction"] is None or norm is None else NormalDist().inv_cdf(im["p_lower"]) / norm
        assert im["radius"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    correct = [im for im in images if im["prediction"] == im["label"]]
    assert entry["clean_accuracy"] == pytest.approx(len(correct) / m)
    assert entry["abstain_rate"] == pytest.approx(sum(im["prediction"] is None for im in images) / m)
    assert list(entry["certified_accuracy"]) == RADII
    for r, cell in entry["certified_accuracy"].items():
        k = sum(im["radius"] >= float(r) for im in correct)
        assert cell["value"] == pytest.approx(k / m)
        assert cell["interval"] == pytest.approx(clopper_pearson(k, m))


def test_certify_writes_recomputable_results(certified):
    out, stdout = certified
    assert "mlp-relu: skipped, no noise layer" in stdout
    result = json.loads((out / "certify.json").read_text())
    assert result["smoothing"] == "first-noise-layer" and result["radii"] == RADII
    assert "Clopper-Pearson" in result["interval"] and result["test_images"] == 3
    models = result["models"]
    assert [e["name"] for e in models] == ["mlp+-relu", "mlpn-relu"]     # MLP+ qualifies: noise on in eval
    for e in models:
        assert set(e) == MODEL_KEYS
        assert e["checkpoint"] == str(out / "checkpoints" / f"{e['name']}.npz")
        assert checkpoint.load_meta(e["checkpoint"])["settings"]["variant"] == e["variant"]
        assert (e["smoothing"], e["bound"], e["n0"], e["n"], e["alpha"]) == ("first-noise-layer", "exact", 10, 200,
                                                                             0.001)
        assert e["prefix_norm"] > 0 and [im["index"] for im in e["images"]] == [0, 1, 2]
        check_recomputes(e)
        assert max(im["radius"] for im in e["images"]) > 0         # certificates, not only abstentions
    rows = list(csv.DictReader((out / "certify.csv").open()))
    assert [r["name"] for r in rows] == ["mlp+-relu", "mlpn-relu"]
    for row, e in zip(rows, models):
        assert float(row["certified_0.5"]) == e["certified_accuracy"]["0.5"]["value"]
        assert float(row["high_1.0"]) == e["certified_accuracy"]["1.0"]["interval"][1]
    text = (out / "certify.md").read_text()
    assert "| mlpn-relu | first-noise-layer |" in text and "certified_accuracy.png" in text
    image = matplotlib.image.imread(out / "certified_accuracy.png")
    assert image.shape[:2] == plots.figure_pixels(1, 1, (5.5, 4.2))[::-1]
    assert not list(out.rglob(".tmp-*"))


def test_input_smoothing_of_checkpoints(certified, tmp_path, load_example):
    """--checkpoints certifies what the training scripts wrote, a model without noise too under
    input smoothing; its prefix norm is 1 / s."""
    out = tmp_path / "input"
    result = load_example("certify").main([*QUICK, "--activation", "relu", "--checkpoints", str(certified[0]),
                                           "--smoothing", "input", "--input-noise-scale", "0.5", "--out", str(out)])
    on_disk = json.loads((out / "certify.json").read_text())
    assert [e["name"] for e in on_disk["models"]] == ["mlp+-relu", "mlpn-relu"]   # mlp-relu was never trained
    for e in on_disk["models"]:
        assert (e["smoothing"], e["scale"], e["prefix_norm"], e["bound"]) == ("input", 0.5, 2.0, "exact")
        assert e["obtained"] == "checkpoint" and e["checkpoint"].startswith(str(certified[0]))
        check_recomputes(e)
    assert result["models"][0]["certified_accuracy"] == on_disk["models"][0]["certified_accuracy"]
    assert not (out / "checkpoints").exists()


def test_a_refusal_is_one_line_and_writes_nothing(tmp_path):
    done = script("--n", "0", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == "error: --n 0: expected at least 1\n"
    assert not (tmp_path / "out").exists()


@pytest.fixture
def other_family(certified, tmp_path):
    """A folder whose ``cnn-an.npz`` holds an MLP."""
    folder = tmp_path / "renamed"
    folder.mkdir()
    shutil.copy(certified[0] / "checkpoints" / "mlpn-relu.npz", folder / "cnn-an.npz")
    return folder


@pytest.mark.parametrize("flags, words", [
    (["--n0", "0"], "--n0 0: expected at least 1"),
    (["--n", "-3"], "--n -3: expected at least 1"),
    (["--alpha", "1"], r"--alpha 1.0: expected a number in (0, 1) (the failure probability)"),
    (["--alpha", "0"], r"--alpha 0.0: expected a number in (0, 1) (the failure probability)"),
    (["--alpha", "nan"], r"--alpha nan: expected a number in (0, 1) (the failure probability)"),
    (["--batch", "0"], "--batch 0: expected at least 1"),
    (["--variant", "mlp"], "--smoothing first-noise-layer: mlp-relu has no noise layer to smooth with: certify it "
                           "with --smoothing input"),
    (["--variant", "mlp", "--activation", "both"], "--smoothing first-noise-layer: mlp-relu has no noise layer to "
                                                   "smooth with: certify it with --smoothing input"),
    (["--input-noise-scale", "0.5"], "--input-noise-scale 0.5: expected no value without --smoothing input"),
    (["--smoothing", "input", "--input-noise-scale", "-1"],
     "--input-noise-scale -1.0: expected a positive finite number (pixel units)"),
    (["--input-noise", "-0.25"], "--input-noise -0.25: expected a non-negative finite number (pixel units; 0: off)"),
    (["--input-noise", "wide"], "--input-noise 'wide': expected a non-negative finite number (pixel units; 0: off)"),
    (["--family", "cnn", "--checkpoints", "{certified}"],
     "--checkpoints '{certified}': no checkpoint of the cnn family in {certified}/checkpoints (it holds checkpoints "
     "of the mlp family: pass --family)"),
    (["--family", "cnn", "--variant", "cnn-an", "--checkpoints", "{renamed}"],
     "checkpoint {renamed}/cnn-an.npz is a model of the mlp family (mlpn-relu), not cnn-an of --family cnn"),
    (["--dataset", "mnist", "--checkpoints", "{certified}"],
     "checkpoint {certified}/checkpoints/mlp+-relu.npz was trained on fashion-mnist, not on --dataset mnist: pass "
     "--dataset fashion-mnist"),
    (["--variant", "mlpn", "--checkpoints", "{certified}", "--activation", "sigmoid"],
     "--checkpoints: {certified}/checkpoints/mlpn-sigmoid.npz not found (expected the checkpoints as the training "
     "scripts write them: <variant>-<activation>.npz)"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_input_is_refused_before_any_work(certified, other_family, tmp_path, tiny_mnist, load_example,
                                              monkeypatch, capsys, flags, words):
    folders = {"certified": str(certified[0]), "renamed": str(other_family)}
    flags = [f.format(**folders) for f in flags]
    out = tmp_path / "out"
    argv = [*([] if "cnn" in flags else ["--activation", "relu"]), *flags, "--out", str(out)]
    if "--dataset" not in flags:
        argv = ["--dataset", "fashion-mnist", *argv]
    main = load_example("certify").main
    monkeypatch.setattr(sys, "argv", ["certify.py", *argv])
    with pytest.raises(SystemExit) as refused:
        experiments.cli(lambda: main(argv))
    assert refused.value.code == 2
    assert capsys.readouterr().err == f"error: {words.format(**folders)}\n"
    assert tiny_mnist == [] and not out.exists()                    # no data loaded, nothing written


def test_the_cnns_are_certified_through_their_first_noise_layer(tmp_path, tiny_mnist, load_example):
    """Noise on the first convolution: an affine prefix, its norm exact; noise on the hidden dense
    layer only: a prefix with ReLUs and pools, its norm an upper bound."""
    result = load_example("certify").main(["--family", "cnn", "--epochs", "1", "--limit-batches", "1",
                                           "--limit-eval", "2", "--n0", "5", "--n", "50", "--no-progress",
                                           "--out", str(tmp_path)])
    bounds = {e["name"]: e["bound"] for e in result["models"]}
    assert bounds == {"cnn-mlp+": "upper", "cnn-a+": "exact", "cnn-mlpn": "upper", "cnn-an": "exact"}
    for e in json.loads((tmp_path / "certify.json").read_text())["models"]:
        check_recomputes(e)


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


def test_input_smoothing_defaults_to_the_training_scale(tmp_path, tiny_mnist, load_example):
    train(tmp_path / "run", "--input-noise", "0.4")
    result = load_example("certify").main(["--variant", "mlpn", "--activation", "relu", "--checkpoints",
                                           str(tmp_path / "run"), "--smoothing", "input", "--limit-eval", "2",
                                           "--n0", "5", "--n", "50", "--no-progress", "--out", str(tmp_path / "out")])
    (entry,) = result["models"]
    assert (entry["input_noise"], entry["scale"], entry["prefix_norm"]) == (0.4, 0.4, 2.5)


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


def test_certified_accuracy_figure(tmp_path):
    path = plots.certified_accuracy({"a": [0.1, None, 0.5, 0.0], "b": [None, None], "c": []},
                                    tmp_path / "c.png", "title")
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == plots.figure_pixels(1, 1, (5.5, 4.2))[::-1]
    assert image[..., :3].std() > 0.01 and math.isfinite(image.sum())
