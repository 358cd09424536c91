"""Parity with PyTorch autograd: the MLPN rebuilt in torch float64 with the same weights and the
same noise draws ``eps`` gives the same loss, the same gradients (weights, biases, sigma, mu and
the input), and -- with torch's Adam and a torch version of Eq. (7) -- the same parameters after
a few training steps.

``torch`` comes from the conftest fixture: skipped when missing, failed under
MANUALBP_REQUIRE_TORCH=1.
"""
import sys

import numpy as np
import pytest

from manualbp import get_backend, named_eps
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.optim import Adam, is_noise_level, noise_level_optimizer
from manualbp.zoo import mlp

TOL = 1e-10
SMALL = (20, 16, 8, 5)
PAPER = (784, 100, 50, 10)


def rel(a, b):
    """``max|a - b| / max|b|`` of two host arrays (or numbers)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.max(np.abs(b))
    assert scale > 0, "reference is all zero: nothing compared"
    return float(np.max(np.abs(a - b)) / scale)


def build(sizes, activation, seed=0, n=16, **options):
    bk = get_backend("numpy", "float64", seed)
    model = mlp(bk, "mlpn", activation, sizes=sizes, **options)
    rng = np.random.default_rng(seed + 100)
    for name, p in model.named_parameters().items():    # sigma away from 1, mu non-zero
        if name.endswith(".sigma"):
            p[...] = rng.uniform(0.2, 1.5, p.shape)
        elif name.endswith(".mu"):
            p[...] = rng.normal(0, 0.3, p.shape)
    x = rng.random((n, sizes[0]))
    labels = rng.integers(0, sizes[-1], n)
    return bk, model, x, labels


def layer_names(model):
    return [name for name in model.children if name.startswith("fc")]


def torch_forward(torch, params, eps, x, names, activation):
    """``v = x W^T + b + sigma * eps (+ mu)``, ``phi`` between layers; returns the logits."""
    phi = torch.relu if activation == "relu" else torch.sigmoid
    h = x
    for i, layer in enumerate(names):
        h = h @ params[f"{layer}.weight"].T + params[f"{layer}.bias"]
        if f"{layer}.noise.eps" in eps:
            h = h + params[f"{layer}.noise.sigma"] * eps[f"{layer}.noise.eps"]
        if f"{layer}.noise.mu" in params:
            h = h + params[f"{layer}.noise.mu"]
        if i < len(names) - 1:
            h = phi(h)
    return h


def manual_pass(model, bk, x, labels):
    """Forward, loss and backward in manualbp; returns (loss, grads, dL/dx, eps), all host copies."""
    loss_fn = SoftmaxCrossEntropy(bk)
    loss = float(loss_fn.forward(model.forward(x), labels))
    dx = model.backward(loss_fn.backward(), input_grad=True)
    grads = {k: g.copy() for k, g in model.named_gradients().items()}
    eps = {k: e.copy() for k, e in named_eps(model).items()}
    return loss, grads, dx.copy(), eps


def torch_pass(torch, model, x, labels, eps, activation):
    params = {k: torch.tensor(p, dtype=torch.float64, requires_grad=True)
              for k, p in model.named_parameters().items()}
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    eps_t = {k: torch.tensor(e) for k, e in eps.items()}
    logits = torch_forward(torch, params, eps_t, xt, layer_names(model), activation)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(labels))
    loss.backward()
    return loss.item(), {k: p.grad.numpy() for k, p in params.items()}, xt.grad.numpy()


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("sizes, options", [
    (SMALL, {}), (SMALL, {"learn_mean": True}), (SMALL, {"noise_on_output": True, "learn_mean": True}),
    (PAPER, {}),
], ids=["small", "small-mu", "small-mu-out", "paper"])
def test_gradients_match_torch(torch, sizes, options, activation):
    bk, model, x, labels = build(sizes, activation, n=32 if sizes == PAPER else 16, **options)
    loss, grads, dx, eps = manual_pass(model, bk, x, labels)
    noisy_layers = len(sizes) - 1 if options.get("noise_on_output") else len(sizes) - 2
    expected_eps = {f"fc{i}.noise.eps" for i in range(1, noisy_layers + 1)}
    assert set(eps) == expected_eps
    t_loss, t_grads, t_dx = torch_pass(torch, model, x, labels, eps, activation)

    assert abs(loss - t_loss) / abs(t_loss) < TOL
    assert set(grads) == set(t_grads)
    assert any(k.endswith(".sigma") for k in grads)
    assert any(k.endswith(".mu") for k in grads) == bool(options.get("learn_mean"))
    errors = {k: rel(grads[k], t_grads[k]) for k in grads}
    errors["input"] = rel(dx, t_dx)
    assert max(errors.values()) < TOL, errors


def test_parity_detects_a_different_noise_draw(torch):
    """The comparison is sharp: torch fed a fresh eps (not manualbp's) disagrees on sigma."""
    bk, model, x, labels = build(SMALL, "relu")
    _, grads, _, eps = manual_pass(model, bk, x, labels)
    other = {k: np.random.default_rng(7).standard_normal(e.shape) for k, e in eps.items()}
    _, t_grads, _ = torch_pass(torch, model, x, labels, other, "relu")
    assert rel(grads["fc1.noise.sigma"], t_grads["fc1.noise.sigma"]) > 1e-3


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("learn_mean", [False, True])
def test_three_training_steps_match_torch(torch, activation, learn_mean):
    """Adam (lr 1e-3, L2 weight decay 1e-4) on the weights and Eq. (7) on sigma, three steps,
    each with a new noise draw, against torch.optim.Adam and Adam + ``sigma.abs_()``."""
    bk, model, x, labels = build(SMALL, activation, learn_mean=learn_mean)
    # some sigma entries within one Adam step (~lr) of zero, so that Eq. (7)'s abs acts
    sigma1 = model.named_parameters()["fc1.noise.sigma"]
    sigma1[::2] = 4e-4
    weights_opt = Adam(model, lr=1e-3, weight_decay=1e-4, select=lambda n: not is_noise_level(n))
    sigma_opt = noise_level_optimizer(model, lr=1e-3)
    assert sorted(sigma_opt.names) == ["fc1.noise.sigma", "fc2.noise.sigma"]

    params = {k: torch.tensor(p.copy(), dtype=torch.float64, requires_grad=True)
              for k, p in model.named_parameters().items()}
    t_weights = torch.optim.Adam([p for k, p in params.items() if not is_noise_level(k)],
                                 lr=1e-3, weight_decay=1e-4)
    t_sigma = torch.optim.Adam([p for k, p in params.items() if is_noise_level(k)], lr=1e-3)
    xt, lt = torch.tensor(x), torch.tensor(labels)
    loss_fn = SoftmaxCrossEntropy(bk)
    flipped = 0
    for _ in range(3):
        loss_fn.forward(model.forward(x), labels)
        eps = {k: torch.tensor(e.copy()) for k, e in named_eps(model).items()}
        model.backward(loss_fn.backward(), input_grad=False)
        weights_opt.step()
        sigma_opt.step()

        t_weights.zero_grad()
        t_sigma.zero_grad()
        logits = torch_forward(torch, params, eps, xt, layer_names(model), activation)
        torch.nn.functional.cross_entropy(logits, lt).backward()
        t_weights.step()
        t_sigma.step()
        with torch.no_grad():
            for k, p in params.items():
                if is_noise_level(k):
                    flipped += int((p < 0).sum())
                    p.abs_()

    assert flipped > 0, "Eq. (7)'s abs never acted: the test would not check it"
    for k, p in model.named_parameters().items():
        assert rel(p, params[k].detach().numpy()) < TOL, k
        if is_noise_level(k):
            assert (p >= 0).all()
    assert weights_opt.t == sigma_opt.t == 3


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_missing_library_skips_or_fails_when_required(requirements, monkeypatch, name):
    """The ``torch`` / ``jax`` fixtures skip without the library, but fail under
    MANUALBP_REQUIRE_TORCH=1 / MANUALBP_REQUIRE_JAX=1 or MANUALBP_STRICT=1 (CI)."""
    require, flag = getattr(requirements, name), f"MANUALBP_REQUIRE_{name.upper()}"
    monkeypatch.setitem(sys.modules, name, None)               # ``import <name>`` raises ImportError
    monkeypatch.delenv(flag, raising=False)
    monkeypatch.delenv("MANUALBP_STRICT", raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"{name} not installed"):
        require()
    monkeypatch.setenv(flag, "1")
    with pytest.raises(pytest.fail.Exception, match=f"{flag}=1"):
        require()
    monkeypatch.setenv(flag, "0")
    with pytest.raises(pytest.skip.Exception):
        require()
    monkeypatch.setenv("MANUALBP_STRICT", "1")
    with pytest.raises(pytest.fail.Exception):
        require()
