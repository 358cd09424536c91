"""Figures are written, non-empty and of the expected pixel size; SmoothGrad (Eq. 8) computes what
it says; the experiment runner writes its figures."""
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from manualbp import experiments, get_backend, plots, zoo
from manualbp.estimators import estimate_sigma_gradient, small_problem
from manualbp.layers import Linear, SoftmaxCrossEntropy
from manualbp.model import Sequential
from manualbp.saliency import score_gradient, smoothgrad
from manualbp.train import Trainer, make_optimizers


def pixels(path, ncols, nrows, panel):
    """Read a PNG back; check it has ``ncols x nrows`` panels' worth of pixels and is not blank."""
    image = matplotlib.image.imread(path)
    width, height = plots.figure_pixels(ncols, nrows, panel)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.01                # something was drawn
    return image


def fake_results(epochs=3):
    """``metrics.json`` results as the runner writes them (history with per-layer sigma)."""
    results = []
    for variant, mode in zoo.MLP_VARIANTS.items():
        for activation in ("relu", "sigmoid"):
            history = []
            for e in range(1, epochs + 1):
                level = 1.0 if mode == "fixed" else 1.0 - 0.1 * e
                sigma = {} if mode == "off" else {
                    f"fc{i}.noise": {"mean": level / i, "std": 0.1, "min": level / i - 0.2,
                                     "max": level / i + 0.2} for i in (1, 2)}
                history.append({"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e,
                                "test_accuracy": 0.8 + 0.03 * e, "sigma": sigma})
            results.append({"variant": variant, "activation": activation, "history": history})
    return results


def test_training_curves(tmp_path):
    path = plots.training_curves(fake_results(), str(tmp_path / "curves.png"))
    pixels(path, 3, 1, plots.PANEL)


def test_sigma_evolution_shows_learned_noise_only(tmp_path):
    path = plots.sigma_evolution(fake_results(), str(tmp_path / "sigma.png"))
    pixels(path, 2, 1, plots.PANEL)                     # MLPN relu and sigmoid; MLP+ never changes
    no_noise = [r for r in fake_results() if r["variant"] != "mlpn"]
    pixels(plots.sigma_evolution(no_noise, str(tmp_path / "none.png")), 1, 1, plots.PANEL)


def test_training_figures_names(tmp_path):
    paths = plots.training_figures(fake_results(), str(tmp_path / "out"))
    assert [Path(p).name for p in paths] == ["training_curves.png", "sigma_evolution.png"]


def test_experiment_runner_writes_figures(tmp_path, tiny_mnist):
    """``experiments.run`` ends by drawing the training figures into ``--out``."""
    experiments.main("mlp", ["--variant", "mlpn", "--activation", "relu", "--epochs", "2", "--batch-size", "32",
                             "--out", str(tmp_path), "--no-progress"])
    pixels(tmp_path / "training_curves.png", 3, 1, plots.PANEL)
    pixels(tmp_path / "sigma_evolution.png", 1, 1, plots.PANEL)


def test_estimator_comparison(tmp_path):
    bk = get_backend("numpy", "float64", 0)
    model, x, y = small_problem(bk, sizes=(4, 3, 2))
    estimates = [estimate_sigma_gradient(model, x, y, m, 200, 100) for m in ("pathwise", "likelihood_ratio")]
    pixels(plots.estimator_comparison(estimates, str(tmp_path / "est.png")), 2, 1, plots.WIDE)


# --- SmoothGrad and image grids ------------------------------------------------------------
def test_score_gradient_of_a_linear_model_is_the_class_row():
    bk = get_backend("numpy", "float64", 0)
    model = Sequential(bk, [("fc", Linear(bk, 6, 3))], input_shape=(6,))
    x, classes = bk.normal((4, 6)), bk.asarray([2, 0, 1, 2], dtype="int64")
    grad = score_gradient(model, x, classes)
    np.testing.assert_allclose(grad, model.children["fc"].params["weight"][classes])


def test_smoothgrad_without_noise_is_the_squared_gradient():
    bk = get_backend("numpy", "float64", 0)
    model = zoo.mlp(bk, "mlp", "sigmoid", sizes=(9, 5, 3))
    x = bk.uniform(0, 1, (2, 9))
    maps, classes = smoothgrad(model, x, samples=3, noise=0.0)
    np.testing.assert_array_equal(classes, model.forward(x).argmax(axis=1))
    np.testing.assert_allclose(maps, score_gradient(model, x, classes) ** 2)


def test_smoothgrad_is_seeded_and_sums_channels():
    bk = get_backend("numpy", "float32", 0)
    model = zoo.cnn(bk, "cnn-an", input_shape=(3, 8, 8), channels=(2, 2), hidden=4, classes=3)
    x, c = bk.uniform(0, 1, (2, 3, 8, 8)), bk.asarray([0, 2], dtype="int64")
    a, _ = smoothgrad(model, x, c, samples=5, batch_size=4, model_noise=False, seed=7)
    b, _ = smoothgrad(model, x, c, samples=5, batch_size=1000, model_noise=False, seed=7)
    assert a.shape == (2, 8, 8) and (a >= 0).all() and a.max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-5)         # chunking does not change the maps
    noisy, _ = smoothgrad(model, x, c, samples=5, seed=7)  # CNN-AN keeps its noise in evaluation
    assert not np.allclose(noisy, a)
    with pytest.raises(ValueError, match="classes must have shape"):
        smoothgrad(model, x, c[:1])


def test_saliency_grid(tmp_path):
    bk = get_backend("numpy", "float32", 0)
    x = bk.uniform(0, 1, (3, 784))
    maps = {v.upper(): smoothgrad(zoo.mlp(bk, v), x, samples=4, seed=0)[0] for v in ("mlp", "mlpn")}
    pixels(plots.saliency_grid(x, maps, str(tmp_path / "sal.png")), 3, 3, (plots.TILE, plots.TILE))
    colour = {"A": np.random.default_rng(0).random((2, 8, 8))}
    path = plots.saliency_grid(np.random.default_rng(1).random((2, 3, 8, 8)), colour, str(tmp_path / "rgb.png"))
    pixels(path, 2, 2, (plots.TILE, plots.TILE))


def test_adversarial_grid_with_inline_fgsm(tmp_path):
    """FGSM from the engine's input gradient: x_adv = clip(x + eps * sign(dL/dx), 0, 1)."""
    bk = get_backend("numpy", "float32", 0)
    model = zoo.cnn(bk, "cnn", input_shape=(1, 12, 12), channels=(2, 2), hidden=8, classes=4)
    x, y = bk.uniform(0, 1, (5, 1, 12, 12)), bk.asarray([0, 1, 2, 3, 0], dtype="int64")
    loss = SoftmaxCrossEntropy(bk)
    loss.forward(model.forward(x), y)
    adv = np.clip(x + 0.1 * np.sign(model.backward(loss.backward())), 0, 1)
    preds = {"clean": model.forward(x).argmax(axis=1), "FGSM": model.forward(adv).argmax(axis=1)}
    path = plots.adversarial_grid(x, {"FGSM": adv}, str(tmp_path / "adv.png"), predictions=preds)
    pixels(path, 5, 2, (plots.TILE, plots.TILE))
    with pytest.raises(ValueError, match="holds 4 images, the clean row 5"):
        plots.adversarial_grid(x, adv[:4], str(tmp_path / "bad.png"))


@pytest.fixture
def saliency_example(tiny_mnist, load_example):
    """examples/saliency.py with a tiny flat (MNIST-like) data set in place of the real one."""
    return load_example("saliency")


def test_saliency_example_trains_when_there_is_no_checkpoint(tmp_path, saliency_example):
    path = saliency_example.main(["--out", str(tmp_path), "--images", "2", "--epochs", "3", "--samples", "3"])
    pixels(path, 4, 2, (plots.TILE, plots.TILE))        # image + MLP, MLP+, MLPN
    info = json.loads((tmp_path / "saliency.json").read_text())
    assert info["models"] == ["MLP", "MLP+", "MLPN"] and len(info["test_indices"]) == 2
    assert all(0 <= c <= 3 for c in info["models_correct"])


def test_saliency_example_loads_checkpoints_of_cnn_variants(tmp_path, saliency_example):
    """Checkpoints as the runner writes them (``<variant>.npz``); images reshaped to (1, 28, 28)."""
    bk = get_backend("numpy", "float32", 0)
    for variant in zoo.CNN_VARIANTS:
        model = zoo.cnn(bk, variant)
        Trainer(model, make_optimizers(model)[0], progress=False).save(
            str(tmp_path / "checkpoints" / f"{variant}.npz"))
    path = saliency_example.main(["--family", "cnn", "--checkpoints", str(tmp_path / "checkpoints"),
                                  "--out", str(tmp_path), "--images", "1", "--samples", "2"])
    pixels(path, 6, 1, (plots.TILE, plots.TILE))        # image + five CNN variants


def test_adversarial_grid_shows_true_labels_and_a_title(tmp_path, monkeypatch):
    """The clean row names the true class and the prediction, the attacked rows the prediction
    of the row's model."""
    x = np.random.default_rng(3).random((2, 1, 8, 8))
    titles = []
    show = plots._show
    monkeypatch.setattr(plots, "_show", lambda ax, image, title=None, **kw: titles.append(title) or
                        show(ax, image, title, **kw))
    path = plots.adversarial_grid(x, {"MLP FGSM": x}, str(tmp_path / "adv.png"),
                                  predictions={"clean": np.array([1, 2]), "MLP FGSM": np.array([3, 4])},
                                  labels=np.array([1, 5]), title="FGSM eps 0.100")
    assert titles == ["true 1, pred 1", "true 5, pred 2", "pred 3", "pred 4"]
    assert Path(path).is_file()


def test_saliency_grid_names_each_image_and_has_a_colour_bar(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    labels, bars = [], []
    colorbar, ylabel = Figure.colorbar, Axes.set_ylabel
    monkeypatch.setattr(Figure, "colorbar", lambda self, *a, **k: bars.append(k.get("label")) or colorbar(self, *a, **k))
    monkeypatch.setattr(Axes, "set_ylabel", lambda self, text, *a, **k: labels.append(text) or ylabel(self, text, *a, **k))
    x = np.random.default_rng(0).random((2, 1, 8, 8))
    maps = {"MLP": np.random.default_rng(1).random((2, 8, 8))}
    plots.saliency_grid(x, maps, str(tmp_path / "sal.png"), names=["Trouser", "Bag"])
    assert labels[:2] == ["Trouser", "Bag"] and bars == ["saliency / its maximum"]
