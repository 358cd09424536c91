"""The paper's MNIST CNN and its four noise variants (section 4.2, Table 4): structure, gradient
checks of a small CNN-AN, parity of the full-size CNN-AN with PyTorch autograd (same weights,
same noise draws, float64) and one epoch of training on the real Fashion-MNIST.
"""
import time

import numpy as np
import pytest

from manualbp import get_backend, named_eps
from manualbp.gradcheck import check_gradients, directional_check
from manualbp.layers import GaussianNoise, SoftmaxCrossEntropy
from manualbp.model import INPUT
from manualbp.optim import Adam, is_noise_level, noise_level_optimizer
from manualbp.zoo import CNN_VARIANTS, cnn

TOL = 1e-7
PARITY_TOL = 1e-10

WEIGHTS = {"conv1.weight": (32, 1, 3, 3), "conv2.weight": (64, 32, 3, 3), "fc1.weight": (128, 3136),
           "fc1.bias": (128,), "fc2.weight": (10, 128), "fc2.bias": (10,)}
CONV_BIAS = {"conv1.bias": (32,), "conv2.bias": (64,)}
CONV_NOISE = {"conv1.noise.sigma": (32, 28, 28), "conv2.noise.sigma": (64, 14, 14)}
CONV_MEAN = {"conv1.noise.mu": (32, 28, 28), "conv2.noise.mu": (64, 14, 14)}


@pytest.mark.parametrize("variant, params, buffers", [
    ("cnn", {**WEIGHTS, **CONV_BIAS}, {}),
    ("cnn-mlp+", {**WEIGHTS, **CONV_BIAS}, {"fc1.noise.sigma": (128,)}),
    ("cnn-a+", {**WEIGHTS, **CONV_BIAS}, {**CONV_NOISE, "fc1.noise.sigma": (128,)}),
    ("cnn-mlpn", {**WEIGHTS, **CONV_BIAS, "fc1.noise.sigma": (128,)}, {}),
    ("cnn-an", {**WEIGHTS, **CONV_NOISE, **CONV_MEAN, "fc1.noise.sigma": (128,)}, {}),
])
def test_variants(variant, params, buffers):
    bk = get_backend("numpy", "float32", 0)
    model = cnn(bk, variant)
    assert list(model.children) == ["conv1", "pool1", "act1", "conv2", "pool2", "act2", "flatten",
                                    "fc1", "act3", "fc2"]
    assert {k: tuple(v.shape) for k, v in model.named_parameters().items()} == params
    assert {k: tuple(v.shape) for k, v in model.named_buffers().items()} == buffers
    assert "noise" not in model.children["fc2"].children, "no noise on the logits"
    mode = dict(zip(("conv", "fc"), CNN_VARIANTS[variant]))
    for name, layer in model.modules():
        if isinstance(layer, GaussianNoise):
            expected = mode["conv" if name.startswith("conv") else "fc"]
            assert layer.mode == expected
            assert layer.eval_noise == (expected == "learned")   # default_eval_noise
    x = bk.asarray(np.random.default_rng(0).random((3, 1, 28, 28)))
    logits = model.forward(x)
    assert logits.shape == (3, 10) and logits.dtype == np.float32


def test_options_and_errors():
    bk = get_backend("numpy", "float32", 0)
    with pytest.raises(ValueError, match="unknown CNN variant 'cnn-x'"):
        cnn(bk, "cnn-x")
    model = cnn(bk, "cnn-an", conv_mean=False, eval_noise=False, sigma0=0.5)
    params = model.named_parameters()
    assert "conv1.bias" in params and "conv1.noise.mu" not in params
    assert float(params["conv2.noise.sigma"].max()) == 0.5
    assert not any(layer.eval_noise for _, layer in model.modules() if isinstance(layer, GaussianNoise))
    small = cnn(bk, "cnn", input_shape=(3, 12, 20), channels=(4, 5), hidden=7, classes=3)
    assert small.named_parameters()["fc1.weight"].shape == (7, 5 * 3 * 5)
    with pytest.raises(ValueError, match=r"model input must have shape \(N, 1, 28, 28\)"):
        model.forward(bk.asarray(np.zeros((2, 784))))
    with pytest.raises(ValueError, match=r"model input must have shape \(N, 1, 28, 28\)"):
        model.forward(bk.asarray(np.zeros((2, 3, 28, 28))))


@pytest.mark.parametrize("kernels", ["fast", "reference"])
@pytest.mark.parametrize("variant", ["cnn", "cnn-a+", "cnn-an"])
def test_the_model_is_the_papers_order_exactly(variant, kernels):
    """The model is the chain of its children in their order -- max-pooling, then ReLU -- and
    that is the paper's order (ReLU, then max-pooling) exactly: the model's forward and backward
    give the logits and gradients of the layers' own ``forward`` called in the paper's order and
    ``backward`` in reverse, bit for bit, on both kernel settings -- ties included: constant
    image regions make every 2x2 window of the first feature map a tie."""
    bk = get_backend("numpy", "float32", 5, kernels)
    model = cnn(bk, variant)
    assert model.edges == [(name, (before,)) for name, before in zip(model.children, [INPUT, *model.children])]
    assert [n for n in model.children if n[:3] in ("act", "poo")][:4] == ["pool1", "act1", "pool2", "act2"]
    x = np.zeros((6, 1, 28, 28), np.float32)
    x[:, :, 8:20, 6:22] = np.random.default_rng(6).random((6, 1, 12, 16))
    loss = SoftmaxCrossEntropy(bk)
    names = list(model.children)
    for i in (1, 2):                                        # the paper's order: ReLU, then the pool
        p, a = names.index(f"pool{i}"), names.index(f"act{i}")
        names[p], names[a] = names[a], names[p]
    layers = [model.children[n] for n in names]

    def literal_forward(x):
        for layer in layers:
            x = layer.forward(x)
        return x

    def literal_backward(delta):
        for layer in reversed(layers):
            delta = layer.backward(delta)
        return delta

    results = []
    for forward, backward in ((model.forward, model.backward), (literal_forward, literal_backward)):
        bk.seed(7)
        logits = forward(x)
        loss.forward(logits, np.arange(6) % 10)
        dx = backward(loss.backward())
        results.append((logits.copy(), dx.copy(), {k: g.copy() for k, g in model.named_gradients().items()}))
    (l0, dx0, g0), (l1, dx1, g1) = results
    np.testing.assert_array_equal(l0, l1)
    np.testing.assert_array_equal(dx0, dx1)
    assert g0.keys() == g1.keys()
    for k in g0:
        np.testing.assert_array_equal(g0[k], g1[k], err_msg=k)


# --- gradient checks -------------------------------------------------------------------------

def small_cnn(bk, variant, seed=1):
    """The same network on 1x8x8 inputs with 2 and 3 channels, a hidden layer of 6 and 4 classes;
    sigma moved away from 1 and mu away from 0."""
    model = cnn(bk, variant, input_shape=(1, 8, 8), channels=(2, 3), hidden=6, classes=4)
    rng = np.random.default_rng(seed)
    for name, p in {**model.named_parameters(), **model.named_buffers()}.items():
        if name.endswith(".sigma"):
            p[...] = bk.asarray(rng.uniform(0.2, 1.5, p.shape))
        elif name.endswith(".mu"):
            p[...] = bk.asarray(rng.normal(0, 0.3, p.shape))
    return model


@pytest.mark.parametrize("variant", list(CNN_VARIANTS))
def test_small_cnn_gradients(bk64, variant):
    model = small_cnn(bk64, variant)
    rng = np.random.default_rng(2)
    x = bk64.asarray(rng.random((3, 1, 8, 8)))
    labels = bk64.xp.asarray(rng.integers(0, 4, 3))
    errors = check_gradients(model, x, loss=SoftmaxCrossEntropy(bk64), labels=labels)
    assert set(errors) == set(model.named_parameters()) | {"input"}
    assert max(errors.values()) < TOL, errors


def test_full_size_cnn_an_directional(bk64):
    """The full CNN-AN (28x28) along one random direction through all ~420,000 parameters and
    the input. The step is 1e-7, not 1e-5: ReLU and max-pooling are piecewise linear, and a step
    of 1e-5 along a direction that moves every parameter at once carries some of the ~40,000
    pre-activations across a kink, which spoils the difference quotient (not the gradient)."""
    model = cnn(bk64, "cnn-an")
    x = bk64.asarray(np.random.default_rng(3).random((2, 1, 28, 28)))
    labels = bk64.xp.asarray(np.array([3, 7]))
    assert directional_check(model, x, loss=SoftmaxCrossEntropy(bk64), labels=labels, h=1e-7) < TOL


# --- PyTorch parity ----------------------------------------------------------------------------

def torch_cnn(torch, params, eps, x):
    """The CNN in torch, in the literal order: conv (+ sigma * eps + mu) -> ReLU -> max-pool,
    twice; flatten; dense."""
    F = torch.nn.functional
    h = x
    for i in (1, 2):
        h = F.conv2d(h, params[f"conv{i}.weight"], params.get(f"conv{i}.bias"), padding=1)
        if f"conv{i}.noise.eps" in eps:
            h = h + params[f"conv{i}.noise.sigma"] * eps[f"conv{i}.noise.eps"]
        if f"conv{i}.noise.mu" in params:
            h = h + params[f"conv{i}.noise.mu"]
        h = F.max_pool2d(F.relu(h), 2)
    h = torch.flatten(h, 1)
    h = h @ params["fc1.weight"].T + params["fc1.bias"]
    if "fc1.noise.eps" in eps:
        h = h + params["fc1.noise.sigma"] * eps["fc1.noise.eps"]
    return F.relu(h) @ params["fc2.weight"].T + params["fc2.bias"]


@pytest.mark.parametrize("variant", ["cnn", "cnn-an"])
def test_gradients_match_torch(torch, variant):
    """Same weights, same eps draws, float64: the loss and every gradient -- weights, biases,
    sigma, mu and the input -- agree to 1e-10 relative."""
    bk = get_backend("numpy", "float64", 0)
    model = cnn(bk, variant)
    rng = np.random.default_rng(4)
    for name, p in model.named_parameters().items():
        if name.endswith(".sigma"):
            p[...] = rng.uniform(0.2, 1.5, p.shape)
        elif name.endswith(".mu"):
            p[...] = rng.normal(0, 0.3, p.shape)
    x = rng.random((8, 1, 28, 28))
    labels = rng.integers(0, 10, 8)
    loss_fn = SoftmaxCrossEntropy(bk)
    loss = float(loss_fn.forward(model.forward(x), labels))
    dx = model.backward(loss_fn.backward())
    eps = named_eps(model)
    assert set(eps) == ({"conv1.noise.eps", "conv2.noise.eps", "fc1.noise.eps"} if variant == "cnn-an" else set())

    params = {k: torch.tensor(p, requires_grad=True) for k, p in model.named_parameters().items()}
    xt = torch.tensor(x, requires_grad=True)
    logits = torch_cnn(torch, params, {k: torch.tensor(e) for k, e in eps.items()}, xt)
    t_loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
    t_loss.backward()

    def rel(a, b):
        return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))

    assert abs(loss - t_loss.item()) < PARITY_TOL * abs(t_loss.item())
    errors = {k: rel(g, params[k].grad.numpy()) for k, g in model.named_gradients().items()}
    errors["input"] = rel(dx, xt.grad.numpy())
    assert max(errors.values()) < PARITY_TOL, errors


# --- training on the real data ---------------------------------------------------------------

@pytest.mark.slow
def test_half_an_epoch_on_fashion_mnist(fashion_mnist):
    """200 of the 391 batches of an epoch of the plain CNN (Adam lr 1e-3, L2 weight decay 1e-4
    on the weights, batch 128, 5:1:1 split with seed 0) reach at least 83 % test accuracy
    (0.842 with these seeds; the whole epoch gives 0.864)."""
    from manualbp.data import split_dataset
    from manualbp.datasets import pixels
    from manualbp.train import Trainer

    bk = get_backend("numpy", "float32", 0)
    splits = split_dataset(fashion_mnist, (5, 1, 1), seed=0)
    data = {k: (pixels(bk, x), bk.xp.asarray(y)) for k, (x, y) in splits.items()}
    model = cnn(bk, "cnn")
    opt = Adam(model, lr=1e-3, weight_decay=1e-4, select=lambda n: not is_noise_level(n))
    trainer = Trainer(model, [opt, noise_level_optimizer(model)], batch_size=128, seed=0, progress=False,
                      limit_batches=200)
    t0 = time.perf_counter()
    trainer.train_epoch(*data["train"], epoch=0)
    seconds = time.perf_counter() - t0
    _, accuracy = trainer.evaluate(*data["test"])
    assert accuracy >= 0.83, f"test accuracy {accuracy:.4f} after 200 batches ({seconds:.1f} s)"
