"""Runs that cannot lie: a finished variant resumed reports the same numbers, a resumed run with
another setting is refused, bad flags are refused before any work in one line, and results are
merged into metrics.json atomically, never silently replaced."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, checkout_env

from manualbp import checkpoint, experiments, zoo
from manualbp.checkpoint import CheckpointError


def run(out, *flags, variant="mlpn"):
    return experiments.main("mlp", ["--variant", variant, "--activation", "relu", "--epochs", "1", "--batch-size",
                                    "32", "--out", str(out), "--no-progress", *flags])


def accuracies(metrics, variant="mlpn"):
    (entry,) = [r for r in metrics["results"] if r["variant"] == variant]
    return [entry[k] for k in ("test_accuracy", "test_accuracy_noise_on", "test_accuracy_noise_off")]


def test_a_finished_variant_resumed_reports_the_same_accuracies(tmp_path, tiny_mnist):
    first = accuracies(run(tmp_path))
    assert accuracies(run(tmp_path, "--resume")) == first


def test_checkpoints_record_the_run_and_refuse_another_setting(tmp_path, tiny_mnist):
    run(tmp_path, "--epochs", "1")
    _, meta = checkpoint.load(str(tmp_path / "checkpoints" / "mlpn-relu.npz"))
    assert {"dataset": "mnist", "variant": "mlpn", "activation": "relu", "optimizer": "adam", "lr": 0.001,
            "sigma_update": "eq7", "dtype": "float32", "kernels": "fast", "batch_size": 32,
            "seed": 0}.items() <= meta["settings"].items()
    assert meta["version"]
    for flags, words in ((["--lr", "0.01"], "lr=0.001, this run has lr=0.01"),
                         (["--dtype", "float64"], "dtype='float32', this run has dtype='float64'"),
                         (["--optimizer", "sgd"], "optimizer='adam', this run has optimizer='sgd'"),
                         (["--kernels", "reference"], "kernels='fast', this run has kernels='reference'")):
        with pytest.raises(CheckpointError, match=words):
            run(tmp_path, "--resume", "--epochs", "2", *flags)


def test_results_are_merged_and_never_silently_replaced(tmp_path, tiny_mnist):
    run(tmp_path, variant="mlp")
    merged = run(tmp_path, variant="mlpn")
    assert {r["variant"] for r in merged["results"]} == {"mlp", "mlpn"}
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert {r["variant"] for r in on_disk["results"]} == {"mlp", "mlpn"}
    loads = len(tiny_mnist)
    with pytest.raises(experiments.SettingError, match="already holds the finished results of mlp relu"):
        run(tmp_path, variant="mlp")
    assert len(tiny_mnist) == loads                             # refused before any work
    again = run(tmp_path, "--overwrite", variant="mlp")
    assert {r["variant"] for r in again["results"]} == {"mlp", "mlpn"}


def test_a_failing_write_keeps_the_old_metrics(tmp_path, tiny_mnist, monkeypatch):
    run(tmp_path, variant="mlp")
    before = (tmp_path / "metrics.json").read_bytes()

    replace = os.replace

    def fail(src, dst):
        if str(dst).endswith("metrics.json"):
            raise OSError("disk full")
        replace(src, dst)

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        run(tmp_path, variant="mlpn")
    assert (tmp_path / "metrics.json").read_bytes() == before
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_orphaned_temporary_files_are_removed(tmp_path, tiny_mnist):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".tmp-killed").write_bytes(b"half a checkpoint")
    run(tmp_path)
    assert not (tmp_path / "checkpoints" / ".tmp-killed").exists()


@pytest.mark.parametrize("flags, words", [
    (["--epochs", "0"], "--epochs 0: expected at least 1"),
    (["--batch-size", "0"], "--batch-size 0: expected at least 1"),
    (["--lr", "0"], "--lr 0.0: expected a positive finite number"),
    (["--lr", "nan"], "--lr nan: expected a positive finite number"),
    (["--sigma-lr", "-1"], "--sigma-lr -1.0: expected a positive finite number"),
    (["--weight-decay", "inf"], "--weight-decay inf: expected a non-negative finite number"),
    (["--decay-every", "0"], "--decay-every 0: expected at least 1"),
    (["--decay-gamma", "1.5"], r"--decay-gamma 1.5: expected a number in \(0, 1\]"),
    (["--decay-gamma", "0"], r"--decay-gamma 0.0: expected a number in \(0, 1\]"),
    (["--momentum", "0.5"], "--momentum 0.5: expected no value with --optimizer adam"),
    (["--optimizer", "sgd", "--momentum", "1.5"], r"--momentum 1.5: expected a number in \[0, 1\)"),
    (["--seed", "-1"], "--seed -1: expected a non-negative integer"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, tiny_mnist, flags, words):
    with pytest.raises(experiments.SettingError, match=words):
        run(tmp_path, *flags)
    assert tiny_mnist == []


def test_an_unwritable_out_is_refused(tmp_path, tiny_mnist):
    (tmp_path / "file").write_text("")
    with pytest.raises(experiments.SettingError, match="--out .*cannot write there"):
        run(tmp_path / "file" / "runs")
    assert tiny_mnist == []


def test_a_script_prints_one_line_and_no_traceback(tmp_path):
    script = str(ROOT / "examples" / "mnist_mlp.py")
    done = subprocess.run([sys.executable, script, "--epochs", "0", "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=checkout_env())
    assert done.returncode == 2
    assert done.stderr.strip() == "error: --epochs 0: expected at least 1"
    debug = subprocess.run([sys.executable, script, "--epochs", "0", "--out", str(tmp_path), "--debug"],
                           capture_output=True, text=True, cwd=ROOT, env=checkout_env())
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize("flags, env, words", [
    (["--backend", "cupy"], {"CUDA_VISIBLE_DEVICES": ""}, "error: backend 'cupy': "),       # CuPy sees no GPU
    ([], {"MANUALBP_NUM_THREADS": "two"}, "error: MANUALBP_NUM_THREADS='two': expected a positive integer"),
    ([], {"MANUALBP_NUM_THREADS": "1.5", "MPI_LOCALNRANKS": "2"},        # also read by `import manualbp` there
     "error: MANUALBP_NUM_THREADS='1.5': expected a positive integer"),
], ids=["cupy-without-gpu", "bad-thread-count", "bad-thread-count-read-at-import"])
def test_a_machine_that_cannot_run_the_script_is_refused_in_one_line(tmp_path, flags, env, words):
    """Exit status 2, one line on standard error, before any work: not even ``--out`` is made."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "mnist_mlp.py"), "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, env=checkout_env(**env))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(words) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout == "" and not out.exists()


def test_resuming_a_longer_run_for_fewer_epochs_is_refused_in_one_line(tmp_path, tiny_mnist, monkeypatch, capsys):
    """``--resume --epochs 1`` over a checkpoint of 2 epochs would report ``epochs: 1`` beside a
    history of 2: refused with exit status 2 and one line, before any work, nothing written."""
    run(tmp_path, "--epochs", "2")
    files = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    loads, _ = len(tiny_mnist), capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["mnist_mlp.py"])
    with pytest.raises(SystemExit) as refused:
        experiments.cli(lambda: run(tmp_path, "--resume", "--epochs", "1"))
    assert refused.value.code == 2
    err = capsys.readouterr().err
    assert err == (f"error: checkpoint {tmp_path / 'checkpoints' / 'mlpn-relu.npz'} already holds 2 epochs, more "
                   "than the 1 asked for: ask for at least 2 epochs to resume it\n")
    assert len(tiny_mnist) == loads                                 # before any work
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == files
    assert len(run(tmp_path, "--resume", "--epochs", "2")["results"][0]["history"]) == 2


# --- bad input elsewhere: one clear error each ------------------------------------------------------

def test_bad_input_gets_one_clear_error(tmp_path, monkeypatch):
    from manualbp import get_backend
    from manualbp.corruptions import corrupt
    from manualbp.data import DataError
    from manualbp.data.mnist import _pair
    from manualbp.layers import SoftmaxCrossEntropy
    from manualbp.parallel import num_threads
    from manualbp.verify.cli import main as verify

    monkeypatch.setenv("MANUALBP_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="MANUALBP_NUM_THREADS='two': expected a positive integer"):
        num_threads()
    monkeypatch.delenv("MANUALBP_NUM_THREADS")
    images = np.zeros((2, 1, 28, 28))
    for severity in (2.5, 2.0):
        with pytest.raises(ValueError, match="severity must be an integer in 1..5"):
            corrupt(images, "gaussian_noise", severity, "cifar10-c")
    (tmp_path / "img").write_bytes(bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    (tmp_path / "lbl").write_bytes(bytes([0, 0, 8, 1]) + (0).to_bytes(4, "big"))
    with pytest.raises(DataError, match="holds 0 images, expected at least one"):
        _pair(tmp_path, "img", "lbl")
    bk = get_backend("numpy", "float32", 0)
    model = zoo.mlp(bk, "mlp", "relu")
    with pytest.raises(RuntimeError, match="backward before forward"):
        model.backward(bk.zeros((2, 10)))
    with pytest.raises(TypeError, match="must be an array of the backend .* got list"):
        model.forward([[0.0] * 784])
    with pytest.raises(ValueError, match="at least one sample"):
        SoftmaxCrossEntropy(bk).forward(bk.zeros((0, 10)), bk.asarray([], dtype="int64"))
    for flags, words in ((["--batch", "0"], "--batch 0: expected at least 1"),
                         (["--rtol", "-1"], "--rtol -1.0: expected a tolerance >= 0")):
        with pytest.raises(SystemExit, match=words):
            verify(["--model", "mlp-relu", *flags])


def test_a_nan_loss_stops_training_with_epoch_and_step(tiny_mnist):
    from manualbp import get_backend, progress
    from manualbp.optim import Adam
    from manualbp.train import Trainer
    bk = get_backend("numpy", "float32", 0)
    model = zoo.mlp(bk, "mlp", "relu")
    model.children["fc1"].params["weight"][0, 0] = np.nan
    x = bk.uniform(0, 1, (64, 784))
    y = bk.asarray(np.arange(64) % 10, dtype="int64")
    trainer = Trainer(model, [Adam(model)], batch_size=32, progress=True)
    assert progress.bar([1, 2], "x") == [1, 2]                    # no bar: stderr is not a terminal
    with pytest.raises(FloatingPointError, match=r"epoch 1, step 1 of 2: the training loss is nan"):
        trainer.train_epoch(x, y)


def test_every_training_script_takes_the_quick_run_flags(tmp_path, tiny_mnist):
    metrics = run(tmp_path, "--limit-train", "40", "--limit-eval", "16", "--limit-batches", "1")
    assert metrics["split_sizes"] == {"train": 40, "val": 16, "test": 16}
    for flag in ("--limit-train", "--limit-eval", "--limit-batches"):
        with pytest.raises(experiments.SettingError, match=f"{flag} 0: expected at least 1"):
            run(tmp_path / "other", flag, "0")


def test_json_outputs_stay_valid_json(tmp_path):
    """Non-finite numbers are written as null (strict JSON has no NaN), atomically."""
    path = tmp_path / "out.json"
    checkpoint.write_json(path, {"loss": float("nan"), "rows": [1.5, float("inf"), {"x": -float("inf")}]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": None, "rows": [1.5, None, {"x": None}]}


def test_a_one_epoch_run_shows_its_learned_sigma(tmp_path, tiny_mnist):
    """One epoch leaves a single history point: the sigma figure still shows the learned noise,
    known from the result's noise modes rather than from a change between epochs."""
    from manualbp import plots
    metrics = run(tmp_path, "--epochs", "1")
    (entry,) = metrics["results"]
    assert entry["noise_modes"] == {"fc1.noise": "learned", "fc2.noise": "learned"}
    assert plots._learned(entry)
    fixed = run(tmp_path / "fixed", variant="mlp+")["results"][0]
    assert not plots._learned(fixed)
