"""Randomized smoothing through the model's own noise layer: the Clopper-Pearson bound, the
prefix's norm against the SVD of its explicit matrix, an analytic linear case, and the stand-in."""
from statistics import NormalDist

import numpy as np
import pytest
from scipy import stats

from manualbp import get_backend
from manualbp.certify import (FirstNoiseLayer, InputNoise, certify, check_settings, lower_confidence_bound,
                              predict, spectral_norm)
from manualbp.layers import Conv2d, GaussianNoise, Linear, Sequential
from manualbp.model import evaluating, input_gradient_only
from manualbp.zoo import cnn, mlp


@pytest.mark.parametrize("count, n, alpha", [(0, 10, 0.05), (7, 10, 0.05), (10, 10, 0.001), (99_990, 100_000, 0.001)])
def test_clopper_pearson_lower_bound_is_scipys(count, n, alpha):
    """The one-sided bound at level 1 - alpha is the lower end of scipy's exact two-sided
    interval at level 1 - 2 alpha."""
    expected = stats.binomtest(count, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
    assert lower_confidence_bound(count, n, alpha) == pytest.approx(expected, rel=1e-10, abs=1e-15)


def explicit_matrix(bk, modules, shape):
    """The matrix of the affine chain's linear part, column by column."""
    size = int(np.prod(shape))
    basis = bk.asarray(np.eye(size).reshape((size, *shape)))
    zero = bk.zeros((1, *shape))
    for m in modules:
        basis, zero = m.forward(basis), m.forward(zero)
    return bk.to_host((basis - zero).reshape(size, -1)).T


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_power_iteration_matches_the_svd(kind):
    bk = get_backend("numpy", "float64", seed=3)
    if kind == "dense":
        modules, shape = [Linear(bk, 6, 4)], (6,)
    else:
        modules, shape = [Conv2d(bk, 2, 3, 3, stride=2, padding=1)], (2, 5, 5)
    scale_shape = explicit_matrix(bk, modules, shape).shape[0]
    sigma = bk.asarray(np.random.default_rng(4).uniform(0.2, 2.0, scale_shape)).reshape(
        (4,) if kind == "dense" else (3, 3, 3))
    matrix = explicit_matrix(bk, modules, shape)
    expected = np.linalg.norm(matrix / bk.to_host(sigma).reshape(-1, 1), 2)
    m = Sequential(bk, [(str(i), mod) for i, mod in enumerate(modules)])
    with evaluating(m), input_gradient_only(m):
        assert spectral_norm(bk, m, shape, weight=1 / sigma) == pytest.approx(expected, rel=1e-6)
        assert spectral_norm(bk, m, shape) == pytest.approx(np.linalg.norm(matrix, 2), rel=1e-6)


def linear_model(bk, sigma):
    """``f(x) = argmax(W x + b + sigma * eps)``, two classes: the smoothing is the model's noise."""
    noise = GaussianNoise(bk, (2,), mode="fixed", sigma0=1.0, eval_noise=True)
    noise.buffers["sigma"][...] = bk.asarray(sigma)
    model = Sequential(bk, [("fc", Linear(bk, 3, 2, noise=noise))], input_shape=(3,))
    model.children["fc"].params["weight"][...] = bk.asarray([[1.0, -0.5, 0.25], [-0.5, 0.5, 0.0]])
    model.children["fc"].params["bias"][...] = bk.asarray([0.1, -0.1])
    return model.eval()


def test_a_linear_classifier_has_its_closed_form():
    """Class 0 wins with probability ``Phi(m / sqrt(s0^2 + s1^2))``, ``m`` the logit margin; the
    radius is ``PhiInv(pA) / ||diag(1 / sigma) W||_2``."""
    bk = get_backend("numpy", "float64", seed=5)
    sigma = np.array([0.8, 0.6])
    model = linear_model(bk, sigma)
    smoothing = FirstNoiseLayer(model)
    w = bk.to_host(model.children["fc"].params["weight"])
    assert smoothing.bound == "exact"
    assert smoothing.prefix_norm == pytest.approx(np.linalg.norm(w / sigma[:, None], 2), rel=1e-6)
    x = bk.asarray([[0.5, 0.2, -0.4]])
    margin = float(((w[0] - w[1]) @ bk.to_host(x)[0]) + 0.2)
    p_true = NormalDist().cdf(margin / np.hypot(*sigma))
    n = 200_000
    label, radius, count, p_lower = certify(smoothing, x, n0=100, n=n, alpha=0.001, batch=50_000)
    assert label == 0
    assert abs(count / n - p_true) < 5 * np.sqrt(p_true * (1 - p_true) / n)
    assert p_lower == lower_confidence_bound(count, n, 0.001) < count / n
    assert radius == pytest.approx(NormalDist().inv_cdf(p_lower) / smoothing.prefix_norm)
    assert predict(smoothing, x, n=2000) == 0


def test_abstains_when_the_classes_tie():
    bk = get_backend("numpy", "float64", seed=6)
    model = linear_model(bk, np.array([5.0, 5.0]))
    x = bk.asarray([[0.0, 0.2, 0.0]])
    w = bk.to_host(model.children["fc"].params["weight"])
    model.children["fc"].params["bias"][...] = bk.asarray(-(w @ bk.to_host(x)[0]))   # both logits 0: a tie
    label, radius, _, p_lower = certify(FirstNoiseLayer(model), x, n0=100, n=2000, alpha=0.001)
    assert label is None and radius == 0.0 and p_lower < 0.5


def test_a_prefix_with_a_relu_gets_an_upper_bound():
    """CNN-MLPN: the first noise layer follows convolutions, ReLUs and pools; the norm is the
    product of the segments' norms, at least the exact one of the composed linear parts."""
    bk = get_backend("numpy", "float64", seed=7)
    model = cnn(bk, "cnn-mlpn", input_shape=(1, 8, 8), channels=(2, 3), hidden=6, classes=4).eval()
    smoothing = FirstNoiseLayer(model)
    assert smoothing.bound == "upper" and np.isfinite(smoothing.prefix_norm) and smoothing.prefix_norm > 0
    mlpn = mlp(bk, "mlpn", sizes=(5, 4, 3, 2)).eval()
    assert FirstNoiseLayer(mlpn).bound == "exact"


def test_input_noise_is_cohens_setting():
    bk = get_backend("numpy", "float64", seed=8)
    model = mlp(bk, "mlp", sizes=(3, 4, 3, 2)).eval()
    smoothing = InputNoise(model, 0.5)
    assert smoothing.prefix_norm == 2.0 and smoothing.bound == "exact"
    label, radius, count, p_lower = certify(smoothing, bk.asarray([[3.0, -2.0, 1.0]]), n0=50, n=500, alpha=0.01)
    assert (label is None) == (p_lower < 0.5)
    if label is not None:
        assert radius == pytest.approx(0.5 * NormalDist().inv_cdf(p_lower))


def test_a_silent_neuron_that_the_input_reaches_gives_radius_zero():
    bk = get_backend("numpy", "float64", seed=9)
    assert FirstNoiseLayer(linear_model(bk, np.array([0.0, 1.0]))).prefix_norm == np.inf
    model = linear_model(bk, np.array([0.0, 1.0]))
    model.children["fc"].params["weight"][0] = 0                # ... unless its row of W is zero
    assert FirstNoiseLayer(model).prefix_norm == pytest.approx(np.linalg.norm([-0.5, 0.5, 0.0]))


@pytest.mark.parametrize("bad, words", [(dict(n0=0), "n0"), (dict(n=1.5), "n must"), (dict(alpha=1.0), "alpha")])
def test_bad_settings_are_refused(bad, words):
    settings = {"n0": 100, "n": 1000, "alpha": 0.001, **bad}
    with pytest.raises(ValueError, match=words):
        check_settings(**settings)


def test_a_model_without_drawing_noise_is_refused():
    bk = get_backend("numpy", "float64", seed=0)
    with pytest.raises(ValueError, match="first noise layer draws"):
        FirstNoiseLayer(mlp(bk, "mlp", sizes=(3, 4, 3, 2)))
    with pytest.raises(ValueError, match="first noise layer draws"):
        FirstNoiseLayer(mlp(bk, "mlp+", sizes=(3, 4, 3, 2)))    # fixed noise, off in evaluation


def test_the_stand_in_certifies_as_numpy_does(bk32):
    """A clear-cut image: every draw agrees, so the count, ``pA`` and the radius are the same on
    every backend (the stand-in: CuPy's API, no host read inside the draws)."""
    model = linear_model(bk32, np.array([0.1, 0.1]))
    x = bk32.asarray([[2.0, -1.0, 0.5]])
    label, radius, count, p_lower = certify(FirstNoiseLayer(model), x, n0=20, n=400, alpha=0.01, batch=128)
    assert (label, count) == (0, 400)
    assert p_lower == pytest.approx(0.01 ** (1 / 400))
    assert radius == pytest.approx(NormalDist().inv_cdf(p_lower) / FirstNoiseLayer(model).prefix_norm, rel=1e-5)


def l2_eot_pgd(model, x, y, radius, steps=40, draws=200):
    """L2 PGD on the smoothed classifier: steps of ``radius / 4`` along the expected gradient of
    the loss over the noise (EOT), projected back onto the L2 ball of ``radius`` around ``x``."""
    from manualbp.attacks.eot import expected_gradient
    xp, adv = model.xp, x.copy()
    for _ in range(steps):
        g = expected_gradient(model, adv, y, draws=draws)
        adv = adv + (radius / 4) * g / xp.sqrt((g * g).sum())
        delta = adv - x
        adv = x + delta * min(1.0, radius / float(xp.sqrt((delta * delta).sum())))
    return adv


@pytest.mark.parametrize("sigma", [(0.8, 0.6), (0.3, 1.5)])
def test_no_attack_changes_a_certified_prediction_within_its_radius(sigma):
    """The certificate holds empirically: an L2 EOT-PGD within the certified radius leaves the
    smoothed classifier's answer; at three times the radius the same attack changes it (the
    attack is strong enough to matter), as the linear case's exact robust radius says it must."""
    bk = get_backend("numpy", "float64", seed=10)
    model = linear_model(bk, np.array(sigma))
    smoothing = FirstNoiseLayer(model)
    x, y = bk.asarray([[0.9, 0.1, -0.2]]), bk.asarray([0], dtype="int64")
    label, radius, _, _ = certify(smoothing, x, n0=100, n=20_000, alpha=0.001, batch=20_000)
    assert label == 0 and radius > 0
    w = bk.to_host(model.children["fc"].params["weight"])
    exact = (float((w[0] - w[1]) @ bk.to_host(x)[0]) + 0.2) / np.linalg.norm(w[0] - w[1])
    assert radius < exact                                   # the certificate is sound here
    assert predict(smoothing, l2_eot_pgd(model, x, y, radius), n=20_000) == 0
    assert predict(smoothing, l2_eot_pgd(model, x, y, 3 * exact), n=20_000) == 1


def test_a_collapsed_noise_level_gives_a_huge_norm_not_an_overflow():
    """Neurons whose sigma fell to 1e-30 (the released rule drives some there) make the norm about
    ``|w| / 1e-30``, computed without overflowing float32's ``1 / sigma^2``."""
    bk = get_backend("numpy", "float32", seed=11)
    model = linear_model(bk, np.array([1e-30, 1.0]))
    w = bk.to_host(model.children["fc"].params["weight"]).astype(np.float64)
    expected = np.linalg.norm(w / np.array([1e-30, 1.0])[:, None], 2)
    assert FirstNoiseLayer(model).prefix_norm == pytest.approx(expected, rel=1e-4)


def test_levels_far_apart_with_the_smallest_on_a_dead_row():
    """The smallest level sits on a neuron the input does not reach (a zero row of W): the norm is
    that of the other neurons, not 0, however far apart the levels are."""
    bk = get_backend("numpy", "float32", seed=12)
    model = linear_model(bk, np.array([1e-36, 1e-3]))
    model.children["fc"].params["weight"][0] = 0
    w1 = bk.to_host(model.children["fc"].params["weight"])[1].astype(np.float64)
    assert FirstNoiseLayer(model).prefix_norm == pytest.approx(np.linalg.norm(w1) / 1e-3, rel=1e-4)
