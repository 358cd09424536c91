"""Evaluation never changes what it evaluates: every attack, the corruption cells, saliency maps,
accuracy and the estimators of Theorem 2 leave each parameter and buffer bit for bit as they
were and give every layer back in the mode it came in (training or evaluation, and its
``eval_noise``); a model in training mode is attacked in evaluation mode, so batch-norm running
statistics stay put and fixed ("+") noise is off, and a model loaded from a checkpoint comes
back in evaluation mode."""
import contextlib

import numpy as np
import pytest

from manualbp import evaluate, get_backend, robustness
from manualbp.attacks import eot_pgd, expected_gradient, fgsm, input_gradient, lbfgs, lbfgs_targeted, pgd
from manualbp.datasets import DATASETS
from manualbp.estimators import METHODS, estimate_sigma_gradient
from manualbp.model import evaluating, held_noise
from manualbp.optim import Adam
from manualbp.saliency import score_gradient, smoothgrad
from manualbp.train import Trainer, load_model
from manualbp.zoo import cnn, mlp, resnet18

MODELS = {
    "resnet18-an": lambda bk: resnet18(bk, "resnet18-an", width=2, input_size=8),
    "cnn-an": lambda bk: cnn(bk, "cnn-an", input_shape=(1, 8, 8), channels=(2, 3), hidden=6),
    "mlp+": lambda bk: mlp(bk, "mlp+", "relu", sizes=(64, 7, 5, 10)),
}

CALLS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y, 0.1),
    "pgd": lambda m, x, y: pgd(m, x, y, 0.1, 0.03, 2, random_start=True),
    "eot_pgd": lambda m, x, y: eot_pgd(m, x, y, 0.1, 0.03, 1, draws=2),
    "expected_gradient": lambda m, x, y: expected_gradient(m, x, y, draws=2),
    "input_gradient": lambda m, x, y: input_gradient(m, x, y),
    "lbfgs": lambda m, x, y: lbfgs(m, x, y, max_iter=2),
    "lbfgs_targeted": lambda m, x, y: lbfgs_targeted(m, x, (y + 1) % 10, search_steps=1, max_iter=2),
    "smoothgrad": lambda m, x, y: smoothgrad(m, x, samples=2),
    "score_gradient": lambda m, x, y: score_gradient(m, x, y),
    "accuracy": lambda m, x, y: evaluate.accuracy(m, x, y),
    "accuracy_over_draws": lambda m, x, y: evaluate.accuracy_over_draws(m, x, y, draws=2),
    "run_attack": lambda m, x, y: evaluate.run_attack(m, pgd, x, y, True, 2, budget=0.1, alpha=0.03, steps=1),
}


def snapshot(model):
    """Every parameter and buffer (copies) and every layer's mode and flags."""
    arrays = {k: np.array(v) for k, v in model.state_dict().items()}
    modes = {name: (m.training, getattr(m, "eval_noise", None), m.param_grads, getattr(m, "hold_eps", None))
             for name, m in model.modules()}
    return arrays, modes


def assert_unchanged(model, before, what):
    arrays, modes = snapshot(model)
    assert modes == before[1], f"{what} changed the mode of a layer"
    for k, v in before[0].items():
        np.testing.assert_array_equal(arrays[k], v, err_msg=f"{what} changed {k}")


def batch(model, n=4):
    rng = np.random.default_rng(0)
    x = model.bk.asarray(rng.random((n, *model.input_shape)))
    return x, model.bk.asarray(rng.integers(0, 10, n), dtype="int64")


@pytest.mark.parametrize("mode", ["train", "eval-noise-on", "inside-held-noise"])
@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("name", list(MODELS))
def test_evaluation_leaves_the_model_as_it_found_it(name, call, mode):
    """... also inside the blocks of :func:`held_noise` and :func:`input_gradient_only`, whose
    flags an attack sets for itself and must give back as they were."""
    model = MODELS[name](get_backend("numpy", "float64", 0))
    model.train() if mode == "train" else model.eval(noise=True)
    x, y = batch(model)
    with held_noise(model) if mode == "inside-held-noise" else contextlib.nullcontext():
        if mode == "inside-held-noise":
            model.forward(x)                                   # the draw the block holds
        before = snapshot(model)
        CALLS[call](model, x, y)
        assert_unchanged(model, before, call)


def test_corruption_cells_leave_the_model_as_they_found_it():
    bk = get_backend("numpy", "float32", 0)
    model = cnn(bk, "cnn-an", channels=(2, 3), hidden=6).train()
    images = bk.asarray(np.random.default_rng(1).random((3, 1, 28, 28)))
    y = bk.asarray([0, 1, 2], dtype="int64")
    before = snapshot(model)
    mnist = DATASETS["mnist"]
    robustness.corruption_cells({"cnn-an": model}, images, y,
                                robustness.Settings(mnist.attacks, mnist.corruptions, draws=1))
    assert_unchanged(model, before, "corruption_cells")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["resnet18-an", "cnn-an"])
def test_the_estimators_give_back_the_running_statistics_and_gradients(name, method):
    """Theorem 2's estimators run in training mode, which moves batch norm's running statistics
    and writes gradients: both are given back as they were, in the same arrays."""
    model = MODELS[name](get_backend("numpy", "float64", 0)).train()
    x, y = batch(model, n=2)
    grads = {k: (v, np.array(v)) for k, v in model.named_gradients().items()}
    before = snapshot(model)
    estimate_sigma_gradient(model, x, y, method, draws=4, group_size=2)
    assert_unchanged(model, before, method)
    for k, (array, value) in grads.items():
        assert model.named_gradients()[k] is array, f"{method} replaced the gradient array {k}"
        np.testing.assert_array_equal(array, value, err_msg=f"{method} changed the gradient {k}")


def test_an_attack_on_a_training_model_runs_it_in_evaluation_mode():
    """Fixed noise is off in evaluation mode: PGD on an MLP+ left in training mode gives what
    PGD gives inside ``evaluating(model)``, and batch norm keeps its running statistics."""
    bk = get_backend("numpy", "float64", 0)
    model = MODELS["mlp+"](bk).train()
    x, y = batch(model)
    with evaluating(model):
        expected = pgd(model, x, y, 0.1, 0.03, 3)
    np.testing.assert_array_equal(pgd(model, x, y, 0.1, 0.03, 3), expected)
    assert model.training
    resnet = MODELS["resnet18-an"](bk).train()
    stats = {k: np.array(v) for k, v in resnet.named_buffers().items()}
    pgd(resnet, *batch(resnet), 0.1, 0.03, 2)
    assert all(np.array_equal(resnet.named_buffers()[k], v) for k, v in stats.items())


def test_evaluating_restores_the_previous_mode():
    model = MODELS["cnn-an"](get_backend("numpy", "float64", 0)).eval(noise=False)
    with evaluating(model, noise=True):
        assert all(m.eval_noise for _, m in model.modules() if hasattr(m, "eval_noise"))
    assert not model.training
    assert not any(m.eval_noise for _, m in model.modules() if hasattr(m, "eval_noise"))


def test_a_loaded_model_comes_back_in_evaluation_mode(tmp_path):
    bk = get_backend("numpy", "float64", 0)
    model = MODELS["mlp+"](bk)
    Trainer(model, [Adam(model)], progress=False).save(tmp_path / "model.npz")
    loaded = load_model(get_backend("numpy", "float64", 1), lambda bk: MODELS["mlp+"](bk), tmp_path / "model.npz")
    assert not any(m.training for _, m in loaded.modules())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[k], v)
