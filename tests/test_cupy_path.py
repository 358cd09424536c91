"""The whole path of a run on the CuPy backend: optimiser steps, training and resuming, attacks,
evaluation, corruptions, saliency maps, the estimators of Theorem 2, the comparison with
PyTorch, float32 training, and one training pass of three zoo models that must agree with
NumPy's. Each test is written against ``bk.xp`` and runs on ``numpy``, ``cupy`` and ``cupy-api``.

On a real GPU (``cupy``, marked ``gpu``) they prove that CuPy computes what NumPy computes along
every path a run takes: the same parameters after optimiser steps, the same logits, loss and
gradients within float32 round-off, the same accuracies, attacks, maps and estimates, and a
resumed run bit-identical to an uninterrupted one. On the stand-in (``cupy-api``) the same tests
are CuPy API conformance, not GPU results: the engine uses only CuPy 14.2's names and keywords,
never converts a device array to NumPy implicitly nor hands a NumPy array to the device, and
gives NumPy's numbers. The example scripts' quick modes (``--backend cupy`` in subprocesses on
the stand-in, the tests ``test_cupy_api_conformance_*``) are CuPy API conformance only. On a
real GPU alone, a timing test shows that a training step and an attack only queue their work
(no host synchronisation), which the stand-in can only count.

Noise draws: the libraries' samplers differ, so the comparisons feed both backends the same
draws from the host -- ``eps`` held in the noise layers, or a backend whose ``normal`` draws on
the host (:func:`host_draws`).
"""
import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import CUPY_UNAVAILABLE, ROOT, STANDIN_DIR, assert_normwise_close as assert_close, checkout_env
from manualbp import checkpoint, get_backend, robustness
from manualbp.attacks import eot_pgd, fgsm, lbfgs, pgd
from manualbp.datasets import DATASETS
from manualbp.estimators import METHODS, estimate_sigma_gradient, learned_sigmas
from manualbp.evaluate import accuracy, accuracy_over_draws, perturbation_norms, run_attack
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.model import noise_layers
from manualbp.saliency import score_gradient, smoothgrad
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import cnn, mlp, resnet18

SIZES = (12, 10, 8, 3)
#: normwise relative error allowed between NumPy's result and the backend's, by dtype
RTOL = {"float64": 1e-10, "float32": 1e-4}


def small_mlp(bk):
    return mlp(bk, "mlpn", "relu", sizes=SIZES)


def small_cnn(bk, **options):
    return cnn(bk, "cnn-an", input_shape=(1, 8, 8), channels=(2, 3), hidden=6, classes=3, **options)


def small_resnet(bk, **options):
    return resnet18(bk, "resnet18-an", width=2, input_size=16, classes=3, hidden=(6,), **options)


def twins(backend_name, build, dtype):
    """``(NumPy model, backend model)`` built by ``build``, the backend's holding the NumPy
    model's parameters and buffers (moved with ``bk.asarray``)."""
    reference = build(get_backend("numpy", dtype, 0))
    bk = get_backend(backend_name, dtype, 1)
    model = build(bk)
    model.load_state_dict({k: bk.asarray(v, dtype=v.dtype) for k, v in reference.state_dict().items()})
    return reference, model


def host_draws(bk, seed):
    """Make ``bk`` draw its normal numbers (noise ``eps``, SmoothGrad's copies) from one host
    generator, moved with ``bk.asarray``: two backends given the same ``seed`` draw the same."""
    rng = np.random.default_rng(seed)

    def normal(shape, out=None):
        draws = bk.asarray(rng.standard_normal(tuple(shape)))
        if out is None or tuple(out.shape) != tuple(shape):
            return draws
        out[...] = draws
        return out

    bk.normal = normal
    return bk


def images(model, n, seed=0):
    """``n`` host images in ``[0, 1]`` of the model's input shape and host labels."""
    rng = np.random.default_rng(seed)
    return rng.random((n, *model.input_shape)), rng.integers(0, 3, n)


def on(bk, x, y):
    return bk.asarray(x), bk.asarray(y, dtype="int64")


def blobs(n, seed):
    """Three separable classes in ``[0, 1]^12``: each class brightens its own four inputs."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.uniform(0.2, 0.5, (n, SIZES[0]))
    for c in range(3):
        x[y == c, 4 * c:4 * (c + 1)] += 0.4
    return x, y


def splits_on(bk):
    return {name: on(bk, *blobs(n, seed)) for name, n, seed in (("train", 192, 0), ("val", 48, 1), ("test", 48, 2))}


def host(bk, arrays):
    """Host float64 copies of a dict of backend arrays."""
    return {k: bk.to_host(v).astype(np.float64) for k, v in arrays.items()}


def modes(model):
    return [(name, m.training, getattr(m, "eval_noise", None)) for name, m in model.modules()]


# --- 1. optimisers --------------------------------------------------------------------------------

OPTIMISERS = {
    "adam": lambda m: make_optimizers(m, "adam", lr=1e-2, weight_decay=1e-2)[0][0],
    "sgd-momentum": lambda m: make_optimizers(m, "sgd", lr=1e-1, momentum=0.9, weight_decay=1e-2)[0][0],
    "eq7": lambda m: make_optimizers(m, sigma_lr=5e-2)[0][1],
}


@pytest.mark.parametrize("name", OPTIMISERS)
def test_optimiser_steps_give_numpy_parameters(backend_name, name):
    """Three steps from the same parameters and gradients (float64) end at NumPy's parameters and
    optimiser state; the Eq. (7) update keeps sigma non-negative."""
    models = twins(backend_name, small_mlp, "float64")
    start = host(models[0].bk, models[0].named_parameters())
    results = []
    for model in models:
        bk, opt = model.bk, OPTIMISERS[name](model)
        rng = np.random.default_rng(3)
        for _ in range(3):
            for _, module, key in model.parameter_slots():
                module.grads[key][...] = bk.asarray(rng.standard_normal(module.grads[key].shape))
            opt.step()
        state = {k: v for k, v in opt.state_dict().items() if k not in ("t", "lr")}
        results.append((host(bk, model.named_parameters()), host(bk, state), opt.names))
    (ref_params, ref_state, ref_names), (params, state, names) = results
    assert names == ref_names and state.keys() == ref_state.keys()
    for k in ref_names:
        assert not np.array_equal(ref_params[k], start[k]), f"{k} did not move"
        if k.endswith("sigma"):
            assert params[k].min() >= 0, k
    for k in ref_params:
        assert_close(params[k], ref_params[k], RTOL["float64"], f"{name}: parameter {k}")
    for k in ref_state:
        assert_close(state[k], ref_state[k], RTOL["float64"], f"{name}: state {k}")


# --- 2. training and resuming ---------------------------------------------------------------------

def make_trainer(backend_name, init_seed=0):
    bk = get_backend(backend_name, "float32", init_seed)
    model = small_mlp(bk)
    optimizers, schedule = make_optimizers(model, lr=3e-2, sigma_lr=3e-2)
    return Trainer(model, optimizers, schedule, batch_size=16, seed=5, progress=False), splits_on(bk)


def test_resumed_training_is_the_uninterrupted_run(backend_name, tmp_path):
    """Two epochs straight equal one epoch, a checkpoint, and a new trainer (other initial
    weights) resumed to two: the same history, bit-identical parameters and optimiser state, and
    the same final checkpoint."""
    straight, splits = make_trainer(backend_name)
    straight_path = str(tmp_path / "straight.npz")
    straight.fit(splits, 2, checkpoint_path=straight_path, log=None)
    path = str(tmp_path / "interrupted.npz")
    interrupted, splits = make_trainer(backend_name)
    interrupted.fit(splits, 1, checkpoint_path=path, log=None)
    resumed, splits = make_trainer(backend_name, init_seed=9)
    history = resumed.fit(splits, 2, checkpoint_path=path, resume=True, log=None)
    assert [r["epoch"] for r in history] == [1, 2]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in history] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in straight.history]
    bk = straight.bk
    expected, got = host(bk, straight.model.state_dict()), host(bk, resumed.model.state_dict())
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
    for a, b in zip(straight.optimizers, resumed.optimizers):
        sa, sb = a.state_dict(), b.state_dict()
        assert (sa["t"], sa["lr"]) == (sb["t"], sb["lr"])
        for k in sa.keys() - {"t", "lr"}:
            np.testing.assert_array_equal(bk.to_host(sb[k]), bk.to_host(sa[k]), err_msg=k)
    (arrays, meta), (straight_arrays, straight_meta) = checkpoint.load(path), checkpoint.load(straight_path)
    assert meta["epochs_done"] == straight_meta["epochs_done"] == 2 and arrays.keys() == straight_arrays.keys()
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], straight_arrays[k], err_msg=k)


# --- 3. attacks -----------------------------------------------------------------------------------

ATTACKS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, 0.1),
    "pgd": lambda m, x, y: pgd(m, x, y, 0.1, 0.03, 4, random_start=True),
    "eot-pgd": lambda m, x, y: eot_pgd(m, x, y, 0.1, 0.03, 2, draws=3),
    "lbfgs": lambda m, x, y: lbfgs(m, x, y, max_iter=4, budget=0.1),
}


@pytest.mark.parametrize("name", ATTACKS)
def test_attack_stays_in_its_box_and_leaves_the_model_as_it_was(backend_name, name):
    """On a randomised ResNet18-AN in training mode: a backend array of the input's shape and
    dtype, within the L-inf budget and ``[0, 1]``, different from the input; parameters, running
    statistics and every layer's mode unchanged."""
    bk = get_backend(backend_name, "float32", 0)
    model = small_resnet(bk, eval_noise=True).train()
    x, y = on(bk, *images(model, 6))
    x[:2] = 0.0                                              # pixels on the box's edges
    x[2:4] = 1.0
    before, before_modes = host(bk, model.state_dict()), modes(model)
    adv = ATTACKS[name](model, x, y)
    assert isinstance(adv, bk.xp.ndarray) and adv.shape == x.shape and adv.dtype == x.dtype
    step = np.abs(bk.to_host(adv - x))
    assert 0 < step.max() <= 0.1 + 1e-6
    assert bk.scalar(adv.min()) >= 0 and bk.scalar(adv.max()) <= 1
    after = host(bk, model.state_dict())
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert modes(model) == before_modes


# --- 4. evaluation, corruptions, saliency, estimators, verify -------------------------------------

def test_evaluation_gives_numpy_results(backend_name):
    """Accuracy over noise draws (learned noise on), accuracy of the mean model, PGD run batch by
    batch and its perturbation norms equal NumPy's (float64: PGD's sign steps agree exactly)."""
    results = []
    for model in twins(backend_name, small_cnn, "float64"):
        bk = host_draws(model.bk, 4)
        x, y = on(bk, *images(model, 20))
        adv = run_attack(model, pgd, x, y, noise=False, batch_size=7, budget=0.1, alpha=0.03, steps=3)
        results.append({"draws": accuracy_over_draws(model, x, y, draws=3, batch_size=8),
                        "mean model": accuracy(model, x, y, noise=False), "norms": perturbation_norms(x, adv, bk),
                        "pgd": bk.to_host(adv)})
    reference, ours = results
    assert reference["draws"]["draws"] == 3
    for key in ("draws", "mean model"):
        assert ours[key] == reference[key], key
    assert ours["norms"] == pytest.approx(reference["norms"], rel=1e-12)
    np.testing.assert_allclose(ours["pgd"], reference["pgd"], rtol=0, atol=1e-12)


def test_corruption_cells_give_numpy_results(backend_name):
    """Every corruption at every severity, shown to a randomised CNN-AN on the backend: the
    accuracies over noise draws that NumPy measures."""
    cells = []
    for model in twins(backend_name, small_cnn, "float32"):
        bk = host_draws(model.bk, 5)
        x, y = on(bk, *images(model, 16))
        settings = robustness.Settings(DATASETS["fashion-mnist"].attacks, "cifar10-c", draws=2, log=None)
        cells.append(robustness.corruption_cells({"cnn-an": model}, x, y, settings)["cnn-an"])
    assert cells[1] == cells[0]
    assert set(cells[0]) == set(robustness.CORRUPTIONS)


def test_saliency_maps_give_numpy_results(backend_name):
    """The class-score gradient and SmoothGrad (Eq. 8, the same draws) agree with NumPy's."""
    results = []
    for model in twins(backend_name, small_cnn, "float32"):
        bk = host_draws(model.bk, 6)
        x, y = on(bk, *images(model, 5))
        maps, classes = smoothgrad(model.eval(noise=False), x, samples=4, batch_size=8)
        results.append({"gradient": bk.to_host(score_gradient(model, x, y)), "smoothgrad": bk.to_host(maps),
                        "classes": bk.to_host(classes)})
    reference, ours = results
    assert ours["smoothgrad"].shape == (5, 8, 8)
    np.testing.assert_array_equal(ours["classes"], reference["classes"])
    for key in ("gradient", "smoothgrad"):
        assert_close(ours[key], reference[key], RTOL["float32"], key)


def test_sigma_gradient_estimators_give_numpy_results(backend_name):
    """Pathwise (Eq. 3), finite-difference and likelihood-ratio estimates of d E[L] / d sigma from
    the same draws (float64, as finite differences need) are NumPy's, group by group."""
    estimates = []
    for model in twins(backend_name, small_mlp, "float64"):
        bk = host_draws(model.bk, 7)
        for _, layer in learned_sigmas(model):
            layer.params["sigma"][...] = bk.asarray(np.linspace(0.3, 1.2, layer.params["sigma"].size))
        x, y = on(bk, *images(model, 4))
        model.train()
        estimates.append({m: estimate_sigma_gradient(model, x, y, m, draws=20, group_size=10) for m in METHODS})
    for method in METHODS:
        reference, ours = estimates[0][method], estimates[1][method]
        assert ours.names == reference.names and ours.group_means.shape == (2, sum(SIZES[1:-1]))
        assert_close(ours.group_means, reference.group_means, RTOL["float64"], method)


def test_pytorch_comparison_passes_as_on_numpy(backend_name, torch):
    """:func:`manualbp.verify.verify_model` of a CNN-AN in training mode (noise drawn on the
    backend, handed to PyTorch) passes in float32, on the rows NumPy's report has."""
    from manualbp.verify import verify_model
    reports = []
    for model in twins(backend_name, small_cnn, "float32"):
        x, y = images(model, 4)
        reports.append(verify_model(model.train(), model.bk.asarray(x), model.bk.asarray(y, dtype="int64"), "torch"))
    reference, ours = reports
    assert ours.passed, ours.format()
    assert [(r.name, r.shape) for r in ours.rows] == [(r.name, r.shape) for r in reference.rows]
    assert {"fc1.noise.sigma", "conv1.noise.mu", "input"} <= {r.name for r in ours.rows}


# --- 5. float32 training end to end ---------------------------------------------------------------

def test_float32_training_with_learned_noise_lowers_the_loss(backend_name):
    """Four epochs of an MLPN on separable data: the training loss falls, the validation accuracy
    is far above chance, every learned sigma moved and stayed positive."""
    trainer, splits = make_trainer(backend_name)
    history = trainer.fit(splits, 4, log=None)
    losses = [r["train_loss"] for r in history]
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0]
    assert history[-1]["val_accuracy"] > 0.7
    for name, layer in noise_layers(trainer.model).items():
        sigma = trainer.bk.to_host(layer.params["sigma"])
        assert sigma.dtype == np.float32 and sigma.min() > 0 and np.abs(sigma - 1).max() > 1e-3, name


# --- 6. one training pass: NumPy and the backend agree --------------------------------------------

AGREEMENT_MODELS = {"mlpn": small_mlp, "cnn-an": small_cnn, "resnet18-an": small_resnet}


@pytest.mark.parametrize("name", AGREEMENT_MODELS)
def test_training_pass_agrees_with_numpy(backend_name, name):
    """The same weights and the same noise draws (held ``eps`` from the host): logits, loss,
    every parameter gradient (sigma and mu included), dL/dx and the batch-norm running
    statistics agree with NumPy's within float32 round-off."""
    rng = np.random.default_rng(8)
    models = twins(backend_name, AGREEMENT_MODELS[name], "float32")
    x, y = images(models[0], 6)
    eps = {k: rng.standard_normal((len(x), *layer.shape)) for k, layer in noise_layers(models[0]).items()}
    results = []
    for model in models:
        bk = model.bk
        for k, layer in noise_layers(model).items():
            layer.eps, layer.hold_eps = bk.asarray(eps[k]), True
        loss = SoftmaxCrossEntropy(bk)
        logits = model.train().forward(bk.asarray(x))
        value = loss.forward(logits, bk.asarray(y, dtype="int64"))
        dx = model.backward(loss.backward())
        assert isinstance(dx, bk.xp.ndarray)
        results.append(host(bk, {"logits": logits, "loss": value, "dL/dx": dx, **model.named_gradients(),
                                 **{f"buffer {k}": b for k, b in model.named_buffers().items()}}))
    reference, ours = results
    assert ours.keys() == reference.keys()
    assert any(k.endswith("sigma") for k in ours) and (name == "mlpn" or any(k.endswith("mu") for k in ours))
    for k in reference:
        assert_close(ours[k], reference[k], RTOL["float32"], f"{name}: {k}")


# --- 7. the example scripts on the stand-in: CuPy API conformance ---------------------------------

#: the scripts of this checkout on the CuPy stand-in
QUICK_TRAINING = ["--backend", "cupy", "--dataset", "fashion-mnist", "--limit-train", "128", "--limit-eval", "32",
                  "--batch-size", "64", "--no-progress"]


def script(*argv, timeout=120):
    """Run ``python argv...`` from the repository root on the stand-in; its exit code must be 0."""
    done = subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, cwd=ROOT,
                          env=checkout_env(STANDIN_DIR), timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def conformance_run(tmp_path_factory, fashion_mnist):
    """``examples/mnist_mlp.py --backend cupy`` on the stand-in: every MLP variant, one epoch on
    128 real Fashion-MNIST images (CuPy API conformance). Returns its ``--out`` folder."""
    out = tmp_path_factory.mktemp("cupy-api-mnist-mlp")
    script(ROOT / "examples" / "mnist_mlp.py", *QUICK_TRAINING, "--epochs", "1", "--out", out)
    return out


def entry(metrics, variant, activation):
    (found,) = [r for r in metrics["results"] if (r["variant"], r["activation"]) == (variant, activation)]
    return found


@pytest.mark.cupy_api
def test_cupy_api_conformance_mnist_mlp_trains_and_resumes(conformance_run, tmp_path):
    """CuPy API conformance of the training script: a one-epoch run on Fashion-MNIST writes its
    metrics and checkpoints, and ``--resume`` continues MLPN to a second epoch from its checkpoint."""
    metrics = json.loads((conformance_run / "metrics.json").read_text())
    assert metrics["backend"] == "cupy" and len(metrics["results"]) == 6
    assert (conformance_run / "training_curves.png").stat().st_size > 0
    out = tmp_path / "run"
    shutil.copytree(conformance_run, out)
    script(ROOT / "examples" / "mnist_mlp.py", *QUICK_TRAINING, "--variant", "mlpn", "--activation", "relu",
           "--epochs", "2", "--resume", "--out", out)
    first = entry(metrics, "mlpn", "relu")
    resumed = entry(json.loads((out / "metrics.json").read_text()), "mlpn", "relu")
    assert [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert resumed["history"][0] == first["history"][0]
    _, meta = checkpoint.load(str(out / "checkpoints" / "mlpn-relu.npz"))
    assert meta["epochs_done"] == 2


@pytest.mark.cupy_api
def test_cupy_api_conformance_robustness_table(conformance_run, tmp_path):
    """CuPy API conformance of the robustness table: the checkpoints the training script wrote
    attacked by FGSM, L-BFGS, PGD and EOT-PGD, corrupted and transferred, the tables written."""
    out = tmp_path / "robustness"
    script(ROOT / "examples" / "robustness_table.py", "--backend", "cupy", "--family", "mlp", "--checkpoints",
           conformance_run, "--epochs", "1", "--limit-train", "128", "--limit-eval", "16", "--draws", "1",
           "--eot-draws", "1", "--no-sweep", "--attack-batch", "16", "--lbfgs-batch", "16", "--no-progress",
           "--out", out)
    for name in ("robustness.md", "robustness.csv", "robustness.json", "adversarial_examples.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "robustness.json").read_text())
    (run,) = result["runs"]
    assert len(result["values"]) == 6 and set(run["models"].values()) == {"checkpoint", "1 epochs"}


@pytest.mark.cupy_api
def test_cupy_api_conformance_verify(tmp_path, torch):
    """CuPy API conformance of ``python -m manualbp.verify --backend cupy``: a CNN-AN in float32
    agrees with PyTorch and the report is written."""
    report = tmp_path / "report.json"
    done = script("-m", "manualbp.verify", "--backend", "cupy", "--dtype", "float32", "--model", "cnn-an",
                  "--batch", "2", "--json", report)
    assert "1 of 1 models agree" in done.stdout
    (saved,) = json.loads(report.read_text())
    assert saved["passed"] and saved["dtype"] == "float32"


@pytest.mark.cupy_api
def test_cupy_api_conformance_saliency_and_unbiasedness_examples(cupy_standin, tiny_mnist, load_example, tmp_path):
    """``examples/saliency.py`` (training its models) and ``examples/unbiasedness.py`` with
    ``--backend cupy`` on the stand-in: CuPy API conformance, not a GPU."""
    load_example("saliency").main(["--backend", "cupy", "--out", str(tmp_path / "saliency"), "--images", "2",
                                   "--epochs", "1", "--samples", "2"])
    assert (tmp_path / "saliency" / "saliency.json").is_file()
    load_example("unbiasedness").main(["--backend", "cupy", "--out", str(tmp_path / "unbiasedness"),
                                       "--draws", "200", "--group-size", "100"])
    assert "pathwise, Eq. (3)" in (tmp_path / "unbiasedness" / "unbiasedness.md").read_text()


# --- 8. on a real GPU: a step only queues work ----------------------------------------------------

#: CUDA C of a kernel that keeps one GPU thread busy for ``cycles`` clock ticks
SPIN = r'''
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}'''


@pytest.mark.gpu
@pytest.mark.skipif(CUPY_UNAVAILABLE is not None, reason=f"no usable GPU: {CUPY_UNAVAILABLE}")
@pytest.mark.parametrize("name", ["mlpn", "cnn-an"])
def test_a_step_and_an_attack_return_before_the_gpu_has_run_them(name):
    """No host synchronisation, measured on the hardware rather than counted on the stand-in:
    queued behind a kernel that keeps the GPU busy for half a second, a training step (batch
    128) and a 3-step PGD attack return to the host long before that kernel ends."""
    import cupy
    if cupy.__version__.endswith("+standin"):
        pytest.skip("needs a real GPU: the busy kernel is CUDA C")
    spin = cupy.RawKernel(SPIN, "spin")
    stream = cupy.cuda.get_current_stream()

    def busy(cycles):
        spin((1,), (1,), (np.int64(cycles),))

    busy(1)                                     # compiled on first use
    stream.synchronize()
    start = time.perf_counter()
    busy(10 ** 8)
    stream.synchronize()
    cycles = min(int(10 ** 8 * 0.5 / max(time.perf_counter() - start, 1e-6)), 10 ** 10)   # about 0.5 s
    bk = get_backend("cupy", "float32", 0)
    model = mlp(bk, "mlpn", "relu") if name == "mlpn" else cnn(bk, "cnn-an")
    x, y = on(bk, *images(model, 128))
    trainer = Trainer(model, make_optimizers(model)[0], batch_size=128, progress=False)
    work = {"training step": lambda: trainer.step(x, y),
            "PGD attack": lambda: pgd(model, x, y, 0.1, 0.02, 3)}
    for what, run in work.items():              # each well under CUDA's ~1,000 queued launches
        run(), run()                            # compiles CuPy's kernels, fills the memory pool
        stream.synchronize()
        busy(cycles)
        start = time.perf_counter()
        run()
        queued = time.perf_counter() - start
        stream.synchronize()
        done = time.perf_counter() - start
        assert queued < 0.5 * done, f"{name}: a {what} waited {queued:.3f} s of {done:.3f} s for the GPU"
