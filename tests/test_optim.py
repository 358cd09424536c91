"""Optimisers against hand computations in plain NumPy: Eq. (7) for sigma, Adam with L2 weight
decay, SGD with momentum; the step schedule; state round trips; parameter packing."""
import numpy as np
import pytest

from manualbp import get_backend
from manualbp.layers import Module, SoftmaxCrossEntropy
from manualbp.optim import SGD, Adam, StepLR, is_noise_level, noise_level_optimizer
from manualbp.zoo import mlp

LR, B1, B2, EPS = 1e-3, 0.9, 0.999, 1e-8


class Params(Module):
    """A bare module holding the given arrays as parameters (the optimiser's view of a model)."""

    def __init__(self, bk, **arrays):
        super().__init__(bk)
        for name, value in arrays.items():
            self.add_param(name, bk.asarray(np.array(value, dtype=np.float64)))   # a copy


def run(opt, model, name, grads):
    """Step ``opt`` once per gradient in ``grads`` (written into ``model.grads[name]``); returns
    the parameter after each step."""
    out = []
    for g in grads:
        model.grads[name][...] = g
        opt.step()
        out.append(np.array(model.params[name]))
    return out


# --- Eq. (7) -----------------------------------------------------------------------------------

SIGMA0 = np.array([1.0, 4e-4, 0.002, 0.5, 0.0])
SIGMA_GRADS = [np.array([0.3, 2.0, -1.0, 0.05, -0.7]),
               np.array([-0.1, 1.5, 0.5, 0.05, 0.2]),
               np.array([0.2, 0.8, -0.3, -0.02, -0.4])]


def eq7_by_hand(sigma, grads):
    """Eq. (7) written out: Adam moments with bias correction, then the absolute value."""
    sigma = sigma.copy()
    h, v = np.zeros_like(sigma), np.zeros_like(sigma)
    out = []
    for t, g in enumerate(grads, start=1):
        h = B1 * h + (1 - B1) * g
        v = B2 * v + (1 - B2) * g * g
        h_hat = h / (1 - B1 ** t)
        v_hat = v / (1 - B2 ** t)
        sigma = np.abs(sigma - LR * h_hat / (np.sqrt(v_hat) + EPS))
        out.append(sigma.copy())
    return out


def test_eq7_matches_hand_computation(kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    model = Params(bk, weight=[[1.0, 2.0]], sigma=SIGMA0)
    opt = noise_level_optimizer(model, lr=LR)
    assert opt.names == ["sigma"]
    got = run(opt, model, "sigma", SIGMA_GRADS)
    want = eq7_by_hand(SIGMA0, SIGMA_GRADS)
    for step, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-18, err_msg=f"step {step + 1}")
        assert (a >= 0).all()
    # step 1 moves each entry by lr * g / (|g| + floor) ~ lr: 4e-4 goes to -6e-4 and flips to +6e-4
    assert got[0][1] == pytest.approx(6e-4, rel=1e-6)
    assert got[0][4] == pytest.approx(1e-3, rel=1e-6)        # sigma = 0 pushed up, stays positive
    assert got[0][0] == pytest.approx(1.0 - 1e-3, rel=1e-9)
    np.testing.assert_array_equal(model.params["weight"], [[1.0, 2.0]])   # weights untouched


def test_eq7_abs_is_what_keeps_sigma_nonnegative(kernels):
    """The same update without the absolute value (plain Adam) drives those entries negative."""
    bk = get_backend("numpy", "float64", 0, kernels)
    plain_model = Params(bk, sigma=SIGMA0)
    plain = run(Adam(plain_model, lr=LR), plain_model, "sigma", SIGMA_GRADS)
    assert plain[0][1] == pytest.approx(-6e-4, rel=1e-6)
    assert (plain[-1] < 0).any()
    kept_model = Params(bk, sigma=SIGMA0)
    kept = run(Adam(kept_model, lr=LR, keep_positive=True), kept_model, "sigma", SIGMA_GRADS)
    np.testing.assert_allclose(kept[0], np.abs(plain[0]), rtol=1e-12)
    assert all((k >= 0).all() for k in kept)


def test_noise_level_optimizer_selects_only_learned_sigma(kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    assert noise_level_optimizer(mlp(bk, "mlp", sizes=(4, 3, 3, 2))) is None
    assert noise_level_optimizer(mlp(bk, "mlp+", sizes=(4, 3, 3, 2))) is None   # sigma fixed
    model = mlp(bk, "mlpn", sizes=(4, 3, 3, 2), learn_mean=True)
    opt = noise_level_optimizer(model)
    assert opt.names == ["fc1.noise.sigma", "fc2.noise.sigma"]
    assert opt.keep_positive and opt.weight_decay == 0
    assert is_noise_level("fc1.noise.sigma") and not is_noise_level("fc1.noise.mu")
    assert not is_noise_level("fc1.sigma_scale")


# --- Adam, SGD ---------------------------------------------------------------------------------

P0 = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]])
GRADS = [np.array([[0.1, -0.2, 0.3], [1.0, 0.0, -0.5]]),
         np.array([[-0.3, 0.1, 0.3], [0.5, 0.2, 0.0]]),
         np.array([[0.05, -0.4, -0.1], [-1.0, 0.3, 0.6]])]


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam_matches_hand_computation(weight_decay, kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    model = Params(bk, weight=P0)
    got = run(Adam(model, lr=0.01, betas=(0.8, 0.99), floor=1e-6, weight_decay=weight_decay),
              model, "weight", GRADS)
    p, h, v = P0.copy(), np.zeros_like(P0), np.zeros_like(P0)
    for t, g in enumerate(GRADS, start=1):
        g = g + weight_decay * p                              # L2 decay added to the gradient
        h = 0.8 * h + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        p = p - 0.01 * (h / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-6)
        np.testing.assert_allclose(got[t - 1], p, rtol=1e-12, atol=1e-15, err_msg=f"step {t}")
    assert (p < 0).any()                                      # no abs for ordinary weights


def test_adam_weight_decay_changes_the_update(kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    plain, decayed = Params(bk, weight=P0), Params(bk, weight=P0)
    a = run(Adam(plain, lr=0.01), plain, "weight", GRADS)[-1]
    b = run(Adam(decayed, lr=0.01, weight_decay=0.1), decayed, "weight", GRADS)[-1]
    assert np.abs(a - b).max() > 1e-4


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.9, 0.05), (0.0, 0.05)])
def test_sgd_matches_hand_computation(momentum, weight_decay, kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    model = Params(bk, weight=P0)
    got = run(SGD(model, lr=0.1, momentum=momentum, weight_decay=weight_decay), model, "weight", GRADS)
    p, buf = P0.copy(), np.zeros_like(P0)
    for t, g in enumerate(GRADS, start=1):
        g = g + weight_decay * p
        buf = momentum * buf + g                               # first step: buf = g
        p = p - 0.1 * (buf if momentum else g)
        np.testing.assert_allclose(got[t - 1], p, rtol=1e-13, atol=1e-15, err_msg=f"step {t}")


def test_optimizer_needs_parameters(kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    with pytest.raises(ValueError, match="no parameters"):
        Adam(Params(bk, weight=P0), select=lambda name: False)


# --- StepLR ------------------------------------------------------------------------------------

def test_step_lr(kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    model = Params(bk, weight=P0, sigma=SIGMA0)
    weights = Adam(model, lr=0.1, select=lambda n: not is_noise_level(n))
    sigma = noise_level_optimizer(model, lr=0.01)
    schedule = StepLR([weights, None, sigma], step_size=2, gamma=0.5)
    rates = []
    for epoch in range(5):
        schedule.set_epoch(epoch)
        rates.append((weights.lr, sigma.lr))
    assert rates == [(0.1, 0.01), (0.1, 0.01), (0.05, 0.005), (0.05, 0.005), (0.025, 0.0025)]
    schedule.set_epoch(0)                                      # from the base, not cumulative
    assert (weights.lr, sigma.lr) == (0.1, 0.01)
    with pytest.raises(ValueError, match="step_size must be a positive integer"):
        StepLR([weights], step_size=0, gamma=0.5)


# --- state round trip ---------------------------------------------------------------------------

def _copy_state(state):
    return {k: (np.array(v) if hasattr(v, "shape") else v) for k, v in state.items()}


@pytest.mark.parametrize("make", [
    lambda m: Adam(m, lr=0.01, weight_decay=0.1),
    lambda m: Adam(m, lr=0.01, keep_positive=True),
    lambda m: SGD(m, lr=0.1, momentum=0.9),
], ids=["adam", "eq7", "sgd"])
def test_state_dict_round_trip(make, kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    first = Params(bk, weight=P0)
    opt = make(first)
    run(opt, first, "weight", GRADS[:2])
    state = _copy_state(opt.state_dict())
    assert state["t"] == 2 and set(state) - {"t", "lr"}

    second = Params(bk, weight=np.zeros_like(P0))
    second.load_state_dict(first.state_dict())
    restored = make(second)
    restored.load_state_dict(state)
    assert restored.t == 2 and restored.lr == opt.lr
    a = run(opt, first, "weight", GRADS[2:])[-1]
    b = run(restored, second, "weight", GRADS[2:])[-1]
    np.testing.assert_array_equal(a, b)


def test_state_dict_round_trip_vs_fresh_optimizer(kernels):
    """A fresh optimiser (moments at zero, t = 0) goes elsewhere: restoring the state matters."""
    bk = get_backend("numpy", "float64", 0, kernels)
    model = Params(bk, weight=P0)
    opt = Adam(model, lr=0.01)
    run(opt, model, "weight", GRADS[:2])
    start = np.array(model.params["weight"])
    state = _copy_state(opt.state_dict())
    resumed_model, fresh_model = Params(bk, weight=start), Params(bk, weight=start)
    resumed, fresh = Adam(resumed_model, lr=0.01), Adam(fresh_model, lr=0.01)
    resumed.load_state_dict(state)
    a = run(resumed, resumed_model, "weight", GRADS[2:])[-1]
    b = run(fresh, fresh_model, "weight", GRADS[2:])[-1]
    assert np.abs(a - b).max() > 1e-4


def test_loaded_state_is_a_copy_not_an_alias(kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    first, second = Params(bk, weight=P0), Params(bk, weight=P0)
    a, b = Adam(first, lr=0.01), Adam(second, lr=0.01)
    run(a, first, "weight", GRADS[:1])
    b.load_state_dict(a.state_dict())                         # live arrays, not copies
    saved_m = np.array(b.state["m"]["weight"])
    run(a, first, "weight", GRADS[1:])
    np.testing.assert_array_equal(b.state["m"]["weight"], saved_m)
    assert not np.shares_memory(a.state["m"]["weight"], b.state["m"]["weight"])


def test_load_state_dict_rejects_wrong_shape(kernels):
    bk = get_backend("numpy", "float64", 0, kernels)
    opt = Adam(Params(bk, weight=P0))
    with pytest.raises(ValueError, match="expected shape"):
        opt.load_state_dict({"t": 1, "lr": 0.1, "m/weight": np.zeros(5), "v/weight": np.zeros(6)})
    with pytest.raises(ValueError, match=r"holds \['m'\], expected \['m/weight', 'v/weight'\]"):
        opt.load_state_dict({"t": 1, "lr": 0.1, "m": np.zeros(5)})


# --- the parameter store -------------------------------------------------------------------

def test_parameter_store_holds_every_parameter_and_gradient():
    """The store copies the values in, makes the layers' arrays views of two flat arrays (noise
    levels last, so each optimiser owns one span), and gathers replaced gradients."""
    bk = get_backend("numpy", "float64", 0, "reference")
    model = mlp(bk, "mlpn", "relu", sizes=(5, 4, 3, 2))
    before = {k: np.array(v) for k, v in model.named_parameters().items()}
    store = model.parameter_store()
    assert model.parameter_store() is store
    assert store.names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias",
                           "fc1.noise.sigma", "fc2.noise.sigma"]
    assert store.param.shape == store.grad.shape == (5 * 4 + 4 + 4 * 3 + 3 + 3 * 2 + 2 + 4 + 3,)
    assert store.span(["fc2.noise.sigma", "fc1.noise.sigma"]) == slice(47, 54)
    assert store.span(["fc1.weight", "fc2.weight"]) is None                    # fc1.bias between
    for k, v in model.named_parameters().items():
        np.testing.assert_array_equal(v, before[k])
        assert np.shares_memory(v, store.param) and np.shares_memory(model.named_gradients()[k], store.grad)
    x = bk.asarray(np.random.default_rng(0).standard_normal((6, 5)))
    loss = SoftmaxCrossEntropy(bk)
    loss.forward(model.forward(x), bk.asarray(np.arange(6) % 2, dtype="int64"))
    model.backward(loss.backward(), input_grad=False)          # gradients are written in place
    grads = model.named_gradients()
    assert all(np.shares_memory(grads[n], store.grad) for n in store.names)
    np.testing.assert_array_equal(store.grad, np.concatenate([grads[n].ravel() for n in store.names]))
    with pytest.raises(ValueError, match="change it in place"):
        model.children["fc1"].params["weight"] = np.zeros((4, 5))


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_optimisers_update_the_model_they_were_given(kernels):
    """Fast optimisers step the store's spans, reference ones each parameter; both change the
    model's own arrays, and the two agree."""
    results = {}
    for k in ("fast", "reference"):
        bk = get_backend("numpy", "float64", 0, k)
        model = mlp(bk, "mlpn", "relu", sizes=(5, 4, 3, 2))
        weights = Adam(model, lr=0.01, weight_decay=0.1, select=lambda n: not is_noise_level(n))
        sigma = noise_level_optimizer(model)
        assert (weights.span is not None) if k == "fast" else weights.span is None
        x = bk.asarray(np.random.default_rng(0).standard_normal((6, 5)))
        loss = SoftmaxCrossEntropy(bk)
        old = {n: np.array(v) for n, v in model.named_parameters().items()}
        for _ in range(2):
            loss.forward(model.forward(x), bk.asarray(np.arange(6) % 2, dtype="int64"))
            model.backward(loss.backward(), input_grad=False)
            weights.step()
            sigma.step()
        results[k] = {n: np.array(v) for n, v in model.named_parameters().items()}
        assert all(not np.array_equal(results[k][n], old[n]) for n in old)
    for n in results["fast"]:
        np.testing.assert_allclose(results["fast"][n], results["reference"][n], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("make", [
    lambda m: Adam(m, lr=0.01, weight_decay=0.1),
    lambda m: Adam(m, lr=0.01, keep_positive=True),
    lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=0.05),
])
def test_threaded_update_equals_the_serial_one(monkeypatch, make, kernels):
    """A large update runs in slices on threads: the same bits as one whole-array update."""
    import manualbp.parallel as parallel
    rng = np.random.default_rng(5)
    start = rng.standard_normal(1000)
    grads = [rng.standard_normal(1000) for _ in range(3)]
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("MANUALBP_NUM_THREADS", threads)
        monkeypatch.setattr(parallel, "PARALLEL_MIN_SIZE", 0)
        model = Params(get_backend("numpy", "float32", 0, kernels), w=start)
        results.append(run(make(model), model, "w", grads))
    for serial, threaded in zip(*results):
        np.testing.assert_array_equal(serial, threaded)
