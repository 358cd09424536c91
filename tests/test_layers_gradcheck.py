"""Float64 finite-difference checks of every hand-written backward pass (Eq. 2 and 3).

Each test compares every parameter gradient (weights, biases, sigma, mu) and the input gradient
with centred differences; the relative error ``max|a - n| / max(|a| + |n|)`` must stay below
1e-7. The last tests show that the checker does fail when a gradient is off by 0.1 %.
"""
import numpy as np
import pytest

from manualbp import get_backend, held_noise, named_eps
from manualbp.gradcheck import check_gradients, directional_check, numerical_gradient, relative_error
from manualbp.layers import Dropout, GaussianNoise, LeakyReLU, Linear, ReLU, Sigmoid, SoftmaxCrossEntropy, Tanh
from manualbp.zoo import mlp

TOL = 1e-7


def host_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def away_from_kink(a, margin=1e-2):
    """Move entries off ``0`` by at least ``margin`` (ReLU's derivative jumps there)."""
    return np.where(a >= 0, a + margin, a - margin)


def assert_all_below(errors, expected_names, tol=TOL):
    assert set(errors) == set(expected_names), "every parameter and the input must be checked"
    bad = {name: err for name, err in errors.items() if not err < tol}
    assert not bad, f"gradient check failed: {bad}"


# --- Linear ----------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_linear(bk64, bias):
    layer = Linear(bk64, 7, 5, bias=bias)
    x = bk64.asarray(host_normal(1, (4, 7)))
    errors = check_gradients(layer, x)
    assert_all_below(errors, ["weight", "input"] + (["bias"] if bias else []))
    assert ("bias" in layer.params) == bias


def test_linear_with_noise_child(bk64):
    layer = Linear(bk64, 6, 4, noise=GaussianNoise(bk64, (4,), mode="learned", learn_mean=True))
    layer.children["noise"].params["sigma"][...] = bk64.asarray([0.5, 1.5, 0.2, 2.0])
    x = bk64.asarray(host_normal(2, (3, 6)))
    errors = check_gradients(layer, x)
    assert_all_below(errors, ["weight", "bias", "noise.sigma", "noise.mu", "input"])


def test_linear_gradients_match_closed_form(bk64):
    """``dL/dtheta = delta^T x``, ``dL/db = sum delta``, ``dL/dx = delta theta`` (Eq. 2)."""
    layer = Linear(bk64, 3, 2)
    x_h, delta_h = host_normal(3, (5, 3)), host_normal(4, (5, 2))
    layer.forward(bk64.asarray(x_h))
    dx = bk64.to_host(layer.backward(bk64.asarray(delta_h)))
    w = bk64.to_host(layer.params["weight"])
    np.testing.assert_allclose(bk64.to_host(layer.grads["weight"]), delta_h.T @ x_h, rtol=1e-13)
    np.testing.assert_allclose(bk64.to_host(layer.grads["bias"]), delta_h.sum(0), rtol=1e-13)
    np.testing.assert_allclose(dx, delta_h @ w, rtol=1e-13)
    assert layer.backward(bk64.asarray(delta_h), input_grad=False) is None


# --- GaussianNoise -----------------------------------------------------------------------------

SHAPES = {"dense": ((5,), (4, 5)), "map": ((2, 3, 3), (4, 2, 3, 3))}


@pytest.mark.parametrize("layout", list(SHAPES))
@pytest.mark.parametrize("mode, learn_mean, abs_sigma, expected", [
    ("fixed", False, False, ["input"]),
    ("fixed", True, False, ["mu", "input"]),
    ("learned", False, False, ["sigma", "input"]),
    ("learned", True, False, ["sigma", "mu", "input"]),
    ("learned", False, True, ["sigma", "input"]),
    ("learned", True, True, ["sigma", "mu", "input"]),
])
def test_gaussian_noise(bk64, layout, mode, learn_mean, abs_sigma, expected):
    shape, x_shape = SHAPES[layout]
    layer = GaussianNoise(bk64, shape, mode=mode, learn_mean=learn_mean, abs_sigma=abs_sigma)
    sigma = host_normal(5, shape)                         # about half the entries negative
    sigma = np.where(np.abs(sigma) < 0.1, 0.3, sigma)      # and none near |.|'s kink at 0
    if abs_sigma:
        assert (sigma < 0).any() and (sigma > 0).any()
    else:
        sigma = np.abs(sigma)
    store = layer.params if mode == "learned" else layer.buffers
    store["sigma"][...] = bk64.asarray(sigma)
    if learn_mean:
        layer.params["mu"][...] = bk64.asarray(host_normal(6, shape))
    x = bk64.asarray(host_normal(7, x_shape))
    errors = check_gradients(layer, x)
    assert_all_below(errors, expected)
    assert layer.eps is not None and tuple(layer.eps.shape) == x_shape


def test_gaussian_noise_sigma_gradient_is_eq3(bk64):
    """``dL/dsigma = sum_n delta * eps`` exactly (Eq. 3), ``dL/dmu = sum_n delta``, and the
    residual error passes through unchanged; on a feature map the sum is over the batch only."""
    layer = GaussianNoise(bk64, (2, 3, 3), mode="learned", learn_mean=True)
    v = bk64.asarray(host_normal(8, (6, 2, 3, 3)))
    delta_h = host_normal(9, (6, 2, 3, 3))
    out = layer.forward(v)
    eps = bk64.to_host(layer.eps)
    np.testing.assert_allclose(bk64.to_host(out), bk64.to_host(v) + eps, rtol=1e-14)   # sigma0 = 1
    back = layer.backward(bk64.asarray(delta_h))
    np.testing.assert_array_equal(bk64.to_host(back), delta_h)
    np.testing.assert_allclose(bk64.to_host(layer.grads["sigma"]), (delta_h * eps).sum(0), rtol=1e-13)
    np.testing.assert_allclose(bk64.to_host(layer.grads["mu"]), delta_h.sum(0), rtol=1e-13)
    assert layer.grads["sigma"].shape == (2, 3, 3)


def test_abs_sigma_case_exercises_the_sign():
    """With negative entries, the gradient without the ``sign(sigma)`` factor is wrong: the
    abs_sigma check above really tests the sign handling."""
    bk = get_backend("numpy", "float64", 0)
    layer = GaussianNoise(bk, (6,), mode="learned", abs_sigma=True)
    layer.params["sigma"][...] = [0.5, -0.7, 1.2, -0.3, 0.9, -1.1]
    x = host_normal(10, (5, 6))
    r = host_normal(11, (5, 6))
    f = lambda: float((layer.forward(x) * r).sum())       # noqa: E731
    with held_noise(layer):
        f()
        layer.backward(r)
        analytic = layer.grads["sigma"].copy()
        numeric = numerical_gradient(f, layer.params["sigma"])
        no_sign = (r * layer.eps).sum(0)
    assert relative_error(analytic, numeric) < TOL
    assert relative_error(no_sign, numeric) > 0.1
    np.testing.assert_allclose(analytic, no_sign * np.sign(layer.params["sigma"]), rtol=1e-14)


def test_noise_off_is_identity(bk64):
    layer = GaussianNoise(bk64, (4,), mode="off")
    x = bk64.asarray(host_normal(12, (3, 4)))
    np.testing.assert_array_equal(bk64.to_host(layer.forward(x)), bk64.to_host(x))
    assert layer.eps is None and layer.params == {} and layer.buffers == {}
    assert_all_below(check_gradients(layer, x), ["input"])


# --- dropout -------------------------------------------------------------------------------

def test_dropout(bk64):
    """Training: each element kept with probability 1 - p and scaled by 1 / (1 - p), the same mask
    in backward (checked by finite differences with the mask held); evaluation: the identity."""
    layer = Dropout(bk64, p=0.25)
    x = bk64.asarray(host_normal(3, (400, 50)))
    y = bk64.to_host(layer.forward(x))
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], bk64.to_host(x)[kept] / 0.75, rtol=1e-15)
    delta = bk64.asarray(host_normal(4, (400, 50)))
    np.testing.assert_array_equal(bk64.to_host(layer.backward(delta)), bk64.to_host(delta) * bk64.to_host(layer.mask))
    layer.hold_mask = True
    small = Dropout(bk64, p=0.5)
    xs = bk64.asarray(host_normal(5, (4, 6)))
    small.forward(xs)
    small.hold_mask = True
    assert_all_below(check_gradients(small, xs), ["input"])
    layer.eval()
    assert layer.forward(x) is x and layer.backward(delta) is delta
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\), got 1"):
        Dropout(bk64, p=1)


# --- activations ---------------------------------------------------------------------------

@pytest.mark.parametrize("make", [ReLU, LeakyReLU, lambda bk: LeakyReLU(bk, slope=0.2), Sigmoid, Tanh],
                         ids=["relu", "leaky_relu", "leaky_relu_0.2", "sigmoid", "tanh"])
def test_activation(bk64, make):
    layer = make(bk64)
    x_h = away_from_kink(host_normal(13, (5, 7)) * 3)
    assert np.abs(x_h).min() > 1e-3
    errors = check_gradients(layer, bk64.asarray(x_h))
    assert_all_below(errors, ["input"])


def test_activation_values():
    bk = get_backend("numpy", "float64", 0)
    v = np.array([[-2.0, -0.5, 0.5, 3.0]])
    np.testing.assert_array_equal(ReLU(bk).forward(v), [[0, 0, 0.5, 3.0]])
    np.testing.assert_allclose(LeakyReLU(bk, 0.1).forward(v), [[-0.2, -0.05, 0.5, 3.0]], rtol=1e-15)
    np.testing.assert_allclose(Sigmoid(bk).forward(v), 1 / (1 + np.exp(-v)), rtol=1e-14)
    np.testing.assert_allclose(Tanh(bk).forward(v), np.tanh(v), rtol=1e-15)
    assert np.array_equal(Sigmoid(bk).forward(np.array([[-800.0, 800.0]])), [[0.0, 1.0]])   # no overflow, exact limits


# --- softmax cross-entropy -----------------------------------------------------------------

@pytest.mark.parametrize("scale, offset", [(1.0, 0.0), (3.0, 1000.0), (3.0, -1000.0)],
                         ids=["plain", "huge_positive", "huge_negative"])
def test_softmax_cross_entropy(bk64, scale, offset):
    n, k = 6, 5
    logits = bk64.asarray(host_normal(14, (n, k)) * scale + offset)
    labels = bk64.asarray(np.array([0, 1, 2, 3, 4, 2]), dtype="int64")
    loss = SoftmaxCrossEntropy(bk64)
    value = float(loss.forward(logits, labels))
    e = loss.backward()
    numeric = numerical_gradient(lambda: float(loss.forward(logits, labels)), logits)
    assert np.isfinite(value)
    assert relative_error(e, numeric) < TOL
    # closed form (softmax - onehot) / N, computed here in host float64
    z = bk64.to_host(logits)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    onehot = np.eye(k)[bk64.to_host(labels)]
    np.testing.assert_allclose(bk64.to_host(e), (p - onehot) / n, rtol=1e-12, atol=1e-15)
    expected = -np.mean(np.log(p[np.arange(n), bk64.to_host(labels)]))
    assert value == pytest.approx(expected, rel=1e-12)


def test_softmax_cross_entropy_extreme_logits():
    """Logits ~1e3 apart: the log-sum-exp form gives the exact finite loss and gradient."""
    bk = get_backend("numpy", "float64", 0)
    logits = np.array([[1000.0, -1000.0, 0.0], [1000.0, -1000.0, 0.0]])
    labels = np.array([0, 1])
    loss = SoftmaxCrossEntropy(bk)
    value = float(loss.forward(logits, labels))
    assert value == pytest.approx(1000.0, rel=1e-15)      # (0 + 2000) / 2
    e = loss.backward()
    assert np.isfinite(e).all()
    np.testing.assert_allclose(e, [[0, 0, 0], [0.5, -0.5, 0]], atol=1e-300)
    numeric = numerical_gradient(lambda: float(loss.forward(logits, labels)), logits)
    assert relative_error(e, numeric) < TOL

    float32 = get_backend("numpy", "float32", 0)
    loss32 = SoftmaxCrossEntropy(float32)
    value32 = float(loss32.forward(logits.astype(np.float32), labels))
    assert value32 == pytest.approx(1000.0, rel=1e-6)
    assert np.isfinite(loss32.backward()).all()


# --- whole MLPs ------------------------------------------------------------------------------

MLP_SIZES = (6, 5, 4, 3)
MLP_CASES = [
    ("mlp", {}), ("mlp+", {}), ("mlpn", {}),
    ("mlpn", {"learn_mean": True}), ("mlpn", {"noise_on_output": True}),
    ("mlp+", {"learn_mean": True, "noise_on_output": True}),
]


def make_mlp(bk, variant, activation, seed=3, **options):
    bk.seed(seed)
    model = mlp(bk, variant, activation, sizes=MLP_SIZES, **options)
    for name, p in model.named_parameters().items():   # non-trivial sigma and mu
        if name.endswith(".sigma"):
            p[...] = bk.asarray(0.2 + np.abs(host_normal(len(name), p.shape)))
        elif name.endswith(".mu"):
            p[...] = bk.asarray(0.3 * host_normal(len(name) + 1, p.shape))
    return model


def mlp_batch(bk, n=4):
    x = bk.asarray(host_normal(20, (n, MLP_SIZES[0])))
    labels = bk.asarray(np.arange(n) % MLP_SIZES[-1], dtype="int64")
    return x, labels


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("variant, options", MLP_CASES,
                         ids=["mlp", "mlp+", "mlpn", "mlpn-mu", "mlpn-out", "mlp+-mu-out"])
def test_mlp_all_gradients(variant, options, activation):
    bk = get_backend("numpy", "float64", 0)
    model = make_mlp(bk, variant, activation, **options)
    x, labels = mlp_batch(bk)
    expected = list(model.named_parameters()) + ["input"]
    assert_all_below(check_gradients(model, x, loss=SoftmaxCrossEntropy(bk), labels=labels), expected)
    assert_all_below(check_gradients(model, x), expected)
    assert directional_check(model, x, loss=SoftmaxCrossEntropy(bk), labels=labels) < TOL
    assert directional_check(model, x) < TOL


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_mlpn_gradients_on_each_backend(bk64, activation):
    model = make_mlp(bk64, "mlpn", activation, learn_mean=True, noise_on_output=True)
    x, labels = mlp_batch(bk64)
    errors = check_gradients(model, x, loss=SoftmaxCrossEntropy(bk64), labels=labels)
    assert_all_below(errors, list(model.named_parameters()) + ["input"])
    assert directional_check(model, x, loss=SoftmaxCrossEntropy(bk64), labels=labels) < TOL


def test_mlp_eps_held_during_check():
    """The check holds eps fixed: the draws after the check are those of its first forward."""
    bk = get_backend("numpy", "float64", 0)
    model = make_mlp(bk, "mlpn", "relu")
    x, labels = mlp_batch(bk)
    bk.seed(5)
    check_gradients(model, x, loss=SoftmaxCrossEntropy(bk), labels=labels)
    held = {k: v.copy() for k, v in named_eps(model).items()}
    bk.seed(5)
    model.forward(x)
    assert set(held) == {"fc1.noise.eps", "fc2.noise.eps"}
    for name, eps in named_eps(model).items():
        np.testing.assert_array_equal(eps, held[name])


# --- the checker can fail -----------------------------------------------------------------------

def _scale_grad_after_backward(monkeypatch, module, key, factor):
    original = module.backward

    def wrong_backward(delta, input_grad=True):
        out = original(delta, input_grad)
        module.grads[key] *= factor
        return out

    monkeypatch.setattr(module, "backward", wrong_backward)


@pytest.mark.parametrize("layer_name, key, param", [
    ("fc2", "weight", "fc2.weight"),
    ("fc1.noise", "sigma", "fc1.noise.sigma"),
])
def test_checker_detects_wrong_gradient(monkeypatch, layer_name, key, param):
    bk = get_backend("numpy", "float64", 0)
    model = make_mlp(bk, "mlpn", "sigmoid")
    x, labels = mlp_batch(bk)
    loss = SoftmaxCrossEntropy(bk)
    assert check_gradients(model, x, loss=loss, labels=labels)[param] < TOL
    module = dict(model.modules())[layer_name]
    _scale_grad_after_backward(monkeypatch, module, key, 1.001)
    errors = check_gradients(model, x, loss=loss, labels=labels)
    assert errors[param] > 1e-4                          # ~ 0.001 / 2
    others = {k: v for k, v in errors.items() if k != param}
    assert max(others.values()) < TOL                    # the fault is pinned on the right array
    assert directional_check(model, x, loss=loss, labels=labels) > 1e-6


def test_checker_detects_wrong_input_gradient(monkeypatch):
    bk = get_backend("numpy", "float64", 0)
    layer = Sigmoid(bk)
    original = layer.backward
    monkeypatch.setattr(layer, "backward", lambda delta, input_grad=True: original(delta) * 1.001)
    errors = check_gradients(layer, bk.asarray(host_normal(21, (3, 4))))
    assert errors["input"] > 1e-4
