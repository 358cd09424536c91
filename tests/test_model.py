"""The MLP as a model: clear errors for bad input, parameter and eps names, noise in train and
evaluation modes, state loading, and the input gradient."""
import numpy as np
import pytest

from manualbp import get_backend, held_noise, named_eps, noise_layers
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.model import evaluating
from manualbp.zoo import mlp

SIZES = (12, 8, 6, 4)


def batch(bk, n=5, features=SIZES[0], seed=0):
    return bk.asarray(np.random.default_rng(seed).random((n, features)))


# --- bad input -------------------------------------------------------------------------------------

@pytest.fixture
def model32():
    bk = get_backend("numpy", "float32", 0)
    return mlp(bk, "mlpn", "relu")                         # the paper's 784-100-50-10


@pytest.mark.parametrize("shape", [(4, 783), (4, 785), (4, 28, 28), (4, 784, 1), (784,), (4, 1, 784)])
def test_wrong_input_shape(model32, shape):
    x = np.zeros(shape, dtype=np.float32)
    with pytest.raises(ValueError) as info:
        model32.forward(x)
    message = str(info.value)
    assert "(N, 784)" in message and str(tuple(shape)) in message


@pytest.mark.parametrize("dtype", [np.float64, np.uint8, np.int64, np.float16])
def test_wrong_input_dtype(model32, dtype):
    with pytest.raises(TypeError) as info:
        model32.forward(np.zeros((3, 784), dtype=dtype))
    message = str(info.value)
    assert "float32" in message and np.dtype(dtype).name in message


def test_float32_input_into_float64_model():
    model = mlp(get_backend("numpy", "float64", 0), "mlp", sizes=SIZES)
    with pytest.raises(TypeError, match="float64"):
        model.forward(np.zeros((2, SIZES[0]), dtype=np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(model32, bad):
    x = np.zeros((3, 784), dtype=np.float32)
    x[1, 17] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        model32.forward(x)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_opposite_infinities_are_caught(model32):
    x = np.zeros((3, 784), dtype=np.float32)
    x[0, 0], x[2, 5] = np.inf, -np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        model32.forward(x)


def test_large_finite_input_is_accepted(model32):
    """Values whose float32 sum overflows are still finite: not an input error."""
    x = np.full((2, 784), 1e36, dtype=np.float32)
    model32.eval(noise=False)
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(x.sum())
        assert model32.forward(x).shape == (2, 10)


@pytest.mark.parametrize("labels, error, words", [
    (np.array([0, 1, 10]), ValueError, "0..9"),
    (np.array([0, -1, 2]), ValueError, "0..9"),
    (np.array([0.0, 1.0, 2.0]), TypeError, "integers"),
    (np.array([0, 1]), ValueError, "shape"),
    (np.array([[0], [1], [2]]), ValueError, "shape"),
])
def test_bad_labels(model32, labels, error, words):
    logits = model32.forward(np.zeros((3, 784), dtype=np.float32))
    with pytest.raises(error, match=words):
        SoftmaxCrossEntropy(model32.bk).forward(logits, labels)


def test_good_labels_of_any_integer_type(model32):
    logits = model32.forward(np.zeros((3, 784), dtype=np.float32))
    loss = SoftmaxCrossEntropy(model32.bk)
    values = [float(loss.forward(logits, np.array([0, 9, 3], dtype=t)))
              for t in (np.int64, np.uint8, np.int32)]
    assert values[0] == values[1] == values[2] and np.isfinite(values[0])


@pytest.mark.parametrize("variant, activation, words", [
    ("mlpx", "relu", ["'mlpx'", "mlp", "mlp+", "mlpn"]),
    ("MLPN", "relu", ["'MLPN'", "mlpn"]),
    ("mlpn", "gelu", ["'gelu'", "relu", "sigmoid", "tanh"]),
])
def test_unknown_variant_or_activation(variant, activation, words):
    with pytest.raises(ValueError) as info:
        mlp(get_backend("numpy", "float32", 0), variant, activation)
    for word in words:
        assert word in str(info.value)


# --- names --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, options, params, buffers", [
    ("mlpn", {}, ["fc1.weight", "fc1.bias", "fc1.noise.sigma", "fc2.weight", "fc2.bias",
                  "fc2.noise.sigma", "fc3.weight", "fc3.bias"], []),
    ("mlpn", {"learn_mean": True, "noise_on_output": True},
     ["fc1.weight", "fc1.bias", "fc1.noise.sigma", "fc1.noise.mu", "fc2.weight", "fc2.bias",
      "fc2.noise.sigma", "fc2.noise.mu", "fc3.weight", "fc3.bias", "fc3.noise.sigma", "fc3.noise.mu"], []),
    ("mlp+", {}, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"],
     ["fc1.noise.sigma", "fc2.noise.sigma"]),
    ("mlp", {}, ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"], []),
])
def test_parameter_names(variant, options, params, buffers):
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, variant, "relu", **options)
    assert list(model.named_parameters()) == params
    assert list(model.named_gradients()) == params
    assert list(model.named_buffers()) == buffers
    assert list(model.state_dict()) == params + buffers
    assert list(model.children) == ["fc1", "act1", "fc2", "act2", "fc3"]
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters().items()}
    assert shapes["fc1.weight"] == (100, 784) and shapes["fc2.bias"] == (50,)
    if "fc1.noise.sigma" in shapes:
        assert shapes["fc1.noise.sigma"] == (100,)
        assert (model.named_parameters()["fc1.noise.sigma"] == 1.0).all()     # sigma0 = 1
    for name, array in model.named_parameters().items():
        assert array.dtype == np.float32, name
        assert model.named_gradients()[name].shape == array.shape


def test_eps_reachable_by_name_after_forward(backend_name):
    bk = get_backend(backend_name, "float64", 0)
    model = mlp(bk, "mlpn", "sigmoid", sizes=SIZES)
    assert named_eps(model) == {}
    x = batch(bk)
    out = model.forward(x)
    eps = named_eps(model)
    assert list(eps) == ["fc1.noise.eps", "fc2.noise.eps"]
    assert eps["fc1.noise.eps"].shape == (5, 8) and eps["fc2.noise.eps"].shape == (5, 6)
    assert all(e is not None and bk.xp.isfinite(e).all() for e in eps.values())
    assert list(noise_layers(model)) == ["fc1.noise", "fc2.noise"]
    # the draw is the one used: v1 = x W1^T + b1 + sigma1 * eps1
    p = {k: bk.to_host(v) for k, v in model.named_parameters().items()}
    e = {k: bk.to_host(v) for k, v in eps.items()}
    h = 1 / (1 + np.exp(-(bk.to_host(x) @ p["fc1.weight"].T + p["fc1.bias"] + e["fc1.noise.eps"])))
    h = 1 / (1 + np.exp(-(h @ p["fc2.weight"].T + p["fc2.bias"] + e["fc2.noise.eps"])))
    np.testing.assert_allclose(bk.to_host(out), h @ p["fc3.weight"].T + p["fc3.bias"], rtol=1e-12)


# --- noise switches ------------------------------------------------------------------------------------

def outputs(model, x, calls=2):
    return [np.array(model.bk.to_host(model.forward(x))) for _ in range(calls)]


def test_train_mode_draws_noise(backend_name):
    bk = get_backend(backend_name, "float32", 0)
    for variant in ("mlpn", "mlp+"):
        model = mlp(bk, variant, sizes=SIZES)
        a, b = outputs(model, batch(bk))
        assert np.abs(a - b).max() > 1e-3, variant


@pytest.mark.parametrize("variant, noise_by_default", [("mlpn", True), ("mlp+", False)])
def test_eval_noise_switch(backend_name, variant, noise_by_default):
    """Evaluation keeps learned noise on and fixed noise off by default; ``noise=`` overrides."""
    bk = get_backend(backend_name, "float32", 0)
    model = mlp(bk, variant, sizes=SIZES)
    x = batch(bk)
    for noise in (None, False, True):                        # default, the mean model, the randomised one
        model.eval(noise=noise)
        a, b = outputs(model, x)
        if noise or (noise is None and noise_by_default):
            assert np.abs(a - b).max() > 1e-3
        else:
            np.testing.assert_array_equal(a, b)
            assert named_eps(model) == {}


def test_mean_model_equals_noise_free_model():
    bk = get_backend("numpy", "float64", 0)
    noisy = mlp(bk, "mlpn", sizes=SIZES)
    plain = mlp(bk, "mlp", sizes=SIZES)
    plain.load_state_dict({k: v for k, v in noisy.state_dict().items() if "noise" not in k})
    x = batch(bk)
    noisy.eval(noise=False)
    np.testing.assert_array_equal(noisy.forward(x), plain.forward(x))


def test_evaluating_context_restores_modes():
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlpn", sizes=SIZES)
    with evaluating(model, noise=False):
        assert not any(m.training for _, m in model.modules())
        assert not any(layer.eval_noise for layer in noise_layers(model).values())
    assert all(m.training for _, m in model.modules())
    assert all(layer.eval_noise for layer in noise_layers(model).values())


def test_held_noise_reuses_eps():
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlpn", sizes=SIZES)
    x = batch(bk)
    with held_noise(model):
        a, b = outputs(model, x)
    np.testing.assert_array_equal(a, b)
    c = outputs(model, x, calls=1)[0]
    assert np.abs(a - c).max() > 1e-3


# --- state and backward ------------------------------------------------------------------------------

def test_load_state_dict_shape_mismatch():
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlpn", sizes=SIZES)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    state["fc2.weight"] = np.zeros((6, 9), dtype=np.float32)
    before = np.array(model.named_parameters()["fc1.weight"])
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    assert "fc2.weight" in str(info.value) and "(6, 8)" in str(info.value) and "(6, 9)" in str(info.value)
    bigger = mlp(bk, "mlpn", sizes=(12, 9, 6, 4))
    with pytest.raises(ValueError, match="fc1.weight"):
        bigger.load_state_dict({k: np.array(v) for k, v in model.state_dict().items()})
    np.testing.assert_array_equal(model.named_parameters()["fc1.weight"], before)


def test_load_state_dict_names_missing_and_unexpected():
    bk = get_backend("numpy", "float32", 0)
    model = mlp(bk, "mlpn", sizes=SIZES)
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    state.pop("fc1.noise.sigma")
    state["fc9.weight"] = np.zeros(3, dtype=np.float32)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(state)
    assert "fc1.noise.sigma" in str(info.value) and "fc9.weight" in str(info.value)


def test_load_state_dict_copies_values_in_place():
    bk = get_backend("numpy", "float32", 0)
    source, target = mlp(bk, "mlpn", sizes=SIZES), mlp(bk, "mlpn", sizes=SIZES)
    arrays = target.named_parameters()
    target.load_state_dict({k: np.array(v, dtype=np.float64) for k, v in source.state_dict().items()})
    for name, array in target.named_parameters().items():
        assert array is arrays[name] and array.dtype == np.float32
        np.testing.assert_array_equal(array, source.named_parameters()[name])


@pytest.mark.parametrize("variant", ["mlp", "mlp+", "mlpn"])
def test_forward_backward_shapes(backend_name, variant):
    bk = get_backend(backend_name, "float32", 0)
    model = mlp(bk, variant, sizes=SIZES)
    x = batch(bk, n=7)
    logits = model.forward(x)
    assert logits.shape == (7, 4) and logits.dtype == np.float32
    loss = SoftmaxCrossEntropy(bk)
    value = loss.forward(logits, bk.asarray(np.arange(7) % 4, dtype="int64"))
    assert value.shape == () and np.isfinite(float(value))
    e = loss.backward()
    dx = model.backward(e)
    assert dx.shape == (7, SIZES[0]) and dx.dtype == np.float32
    assert float(abs(dx).max()) > 0
    assert model.backward(e, input_grad=False) is None
    for name, grad in model.named_gradients().items():
        assert grad.shape == model.named_parameters()[name].shape, name
        assert float(abs(grad).max()) > 0, name


# --- input gradient only ---------------------------------------------------------------------------

def _zoo_models(bk):
    from manualbp.zoo import cnn, resnet18
    return [(mlp(bk, "mlpn", "relu", sizes=SIZES), (5, SIZES[0])),
            (cnn(bk, "cnn-an"), (3, 1, 28, 28)),
            (resnet18(bk, "resnet18-an", width=4, input_size=8), (3, 3, 8, 8))]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["mlpn", "cnn-an", "resnet18-an"])
@pytest.mark.parametrize("train", [True, False], ids=["train-mode", "eval-mode"])
def test_input_gradient_only_gives_the_same_input_gradient_and_leaves_grads(index, train):
    """The same dL/dx as a full backward pass, and no parameter gradient written -- except
    batch norm's in training mode, which its input gradient is made of."""
    from manualbp.model import input_gradient_only
    bk = get_backend("numpy", "float64", 0)
    model, shape = _zoo_models(bk)[index]
    x = bk.asarray(np.random.default_rng(1).random(shape))
    with held_noise(model):
        if not train:
            model.eval(noise=True)
        logits = model.forward(x)
        seed = bk.asarray(np.random.default_rng(2).standard_normal(logits.shape))
        full = model.backward(seed.copy())
        for g in model.named_gradients().values():
            g[...] = np.nan                                  # a sentinel: must stay untouched
        model.forward(x)
        with input_gradient_only(model):
            only = model.backward(seed.copy())
    np.testing.assert_allclose(only, full, rtol=1e-12, atol=1e-14)
    kept = {n: g for n, g in model.named_gradients().items() if not (train and ".bn" in "." + n)}
    assert kept and all(np.isnan(g).all() for g in kept.values())
    assert all(m.param_grads for _, m in model.modules())     # switched back on after the block


def test_a_training_backward_ends_at_the_first_layer_with_parameters(monkeypatch):
    """``input_grad=False``: the layers below the first one with parameters (here a
    ``Normalize``) are not run backward, and the gradients are those of the full chain."""
    from manualbp.layers import Linear, Normalize, ReLU
    from manualbp.model import Sequential
    bk = get_backend("numpy", "float64", 0)
    model = Sequential(bk, [("norm", Normalize(bk, [0.5, 0.2], [2.0, 3.0])), ("act", ReLU(bk)),
                            ("fc", Linear(bk, 2, 3))])
    x = bk.asarray(np.random.default_rng(0).standard_normal((4, 2)))
    model.forward(x)
    delta = bk.asarray(np.ones((4, 3)))
    dx = model.backward(delta)
    full = {k: v.copy() for k, v in model.named_gradients().items()}
    assert dx.shape == (4, 2)
    for name in ("norm", "act"):
        monkeypatch.setattr(model.children[name], "backward", lambda *a, **k: pytest.fail("ran backward"))
    assert model.backward(delta, input_grad=False) is None
    for k, v in model.named_gradients().items():
        np.testing.assert_array_equal(v, full[k])
