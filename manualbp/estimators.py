"""Three estimators of ``d E[L] / d sigma`` for every learned noise level, to show Theorem 2.

Theorem 2 says the pathwise estimate of Eq. (3), ``dL/dsigma = sum_n delta * eps``, is unbiased
for the derivative of the *expected* loss. Here it is compared with two other estimators of the
same number, each averaged over many independent noise draws:

* ``"pathwise"`` -- Eq. (3), exactly as training computes it (one forward and one backward pass);
* ``"finite_difference"`` -- ``(L(sigma_i + h) - L(sigma_i - h)) / 2h`` with common random
  numbers (the same ``eps`` on both sides), for every ``sigma_i`` in turn;
* ``"likelihood_ratio"`` -- the score-function estimator ``l_n (eps_n^2 - 1) / sigma``:
  ``(eps^2 - 1) / sigma`` is ``d/dsigma log p(z)`` for ``z = sigma * eps ~ N(0, sigma^2)``; each
  sample's loss ``l_n`` (divided by ``N``, as in the mean) multiplies the score of its own noise.

Draws are batched: a group of ``m`` draws is one forward pass over the ``N`` samples repeated ``m``
times (every row gets its own ``eps``). The mean loss over that stacked batch is the average of
the ``m`` per-draw losses, so one engine backward pass gives the average of ``m`` pathwise
estimates. Confidence intervals come from the spread of the group averages (batch means).

The ``loss`` is the mean softmax cross-entropy; the model must be in training mode (noise on).
Use a float64 backend for the finite differences.
"""
import math
from dataclasses import dataclass

from . import zoo
from .layers import SoftmaxCrossEntropy
from .model import held_noise, noise_layers, state_restored

METHODS = ("pathwise", "finite_difference", "likelihood_ratio")


@dataclass
class Estimate:
    """Group averages of one estimator: ``group_means[g, p]`` is the mean over the ``g``-th group
    of ``draws_per_group`` draws, for the ``p``-th noise level ``names[p]`` (host arrays)."""

    method: str
    names: list
    group_means: object
    draws_per_group: int

    @property
    def groups(self):
        return int(self.group_means.shape[0])

    @property
    def draws(self):
        return self.groups * self.draws_per_group

    @property
    def mean(self):
        """The estimate: the mean over all draws."""
        return self.group_means.mean(axis=0)

    @property
    def standard_error(self):
        """Standard error of :attr:`mean` (batch means)."""
        return self.group_means.std(axis=0, ddof=1) / math.sqrt(self.groups)

    @property
    def variance(self):
        """Variance of the estimator for one draw: ``m * Var(group mean)``."""
        return self.draws_per_group * self.group_means.var(axis=0, ddof=1)

    def half_width(self, level=0.99):
        """Half-width of the two-sided ``level`` confidence interval of :attr:`mean` (Student t)."""
        return critical_value(level, self.groups - 1) * self.standard_error

    def to_dict(self, level=0.99):
        return {"method": self.method, "draws": self.draws, "groups": self.groups,
                "mean": self.mean.tolist(), "standard_error": self.standard_error.tolist(),
                "half_width": self.half_width(level).tolist(), "variance": self.variance.tolist()}


def critical_value(level, df):
    """The Student t quantile ``t_{(1 + level) / 2, df}``."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie in (0, 1), got {level}")
    from scipy.stats import t
    return float(t.ppf(0.5 * (1 + level), df))


def agreement(a, b, level=0.99):
    """``(z, agrees)``: the difference of two independent estimates in units of its standard
    error, and whether it lies inside the ``level`` interval (host arrays, one per noise level)."""
    z = (a.mean - b.mean) / (a.standard_error ** 2 + b.standard_error ** 2) ** 0.5
    return z, abs(z) <= critical_value(level, min(a.groups, b.groups) - 1)


def learned_sigmas(model):
    """``[(noise layer name, layer)]`` of every noise layer whose ``sigma`` is trained."""
    layers = [(name, layer) for name, layer in noise_layers(model).items() if "sigma" in layer.params]
    if not layers:
        raise ValueError("the model has no learned noise level sigma: build an 'N' variant")
    return layers


def sigma_names(model):
    """One name per learned noise level, ``"fc1.noise.sigma[3]"`` (flat index in its layer)."""
    return [f"{name}.sigma[{i}]" for name, layer in learned_sigmas(model)
            for i in range(layer.params["sigma"].size)]


def _pathwise(model, loss, x, y, layers, h):
    loss.forward(model.forward(x), y)
    model.backward(loss.backward(), input_grad=False)                # Eq. (2) and (3)
    return [layer.grads["sigma"].reshape(-1) for _, layer in layers]


def _finite_difference(model, loss, x, y, layers, h):
    model.forward(x)                                                 # a fresh draw of every eps
    out = []
    with held_noise(model):                                          # common random numbers
        for _, layer in layers:
            sigma = layer.params["sigma"].reshape(-1)
            grad = model.xp.empty_like(sigma)
            for i in range(sigma.size):
                old = float(sigma[i])
                sigma[i] = old + h
                plus = float(loss.forward(model.forward(x), y))
                sigma[i] = old - h
                minus = float(loss.forward(model.forward(x), y))
                sigma[i] = old
                grad[i] = (plus - minus) / (2 * h)
            out.append(grad)
    return out


def _likelihood_ratio(model, loss, x, y, layers, h):
    loss.forward(model.forward(x), y)
    share = loss.losses / len(y)                                     # l_n / (m N)
    out = []
    for _, layer in layers:
        sigma = layer.params["sigma"].reshape(-1)
        eps = layer.eps.reshape(len(y), -1)
        score = (eps * eps - 1) / sigma                              # d log p(z) / d sigma
        out.append(share @ score)
    return out


_ESTIMATORS = {"pathwise": _pathwise, "finite_difference": _finite_difference,
               "likelihood_ratio": _likelihood_ratio}


def estimate_sigma_gradient(model, x, y, method="pathwise", draws=10000, group_size=500, h=1e-3,
                            seed=0):
    """Estimate ``d E[L] / d sigma`` for every learned noise level of ``model`` on the batch
    ``(x, y)`` from ``draws`` independent noise draws, in groups of ``group_size``.

    ``method`` is one of :data:`METHODS`; ``h`` is the finite-difference step. The backend's
    generator is re-seeded from ``(seed, method)``, so the three methods use independent draws.
    The model runs in training mode, and its running statistics and gradients are given back as
    they were (:func:`~manualbp.model.state_restored`). Returns an :class:`Estimate`.
    """
    if method not in _ESTIMATORS:
        raise ValueError(f"unknown estimator {method!r}: expected one of {', '.join(METHODS)}")
    if group_size < 1:
        raise ValueError(f"group_size must be a positive number of draws, got {group_size}")
    if draws < 2 * group_size or draws % group_size:
        raise ValueError(f"draws ({draws}) must be a multiple of group_size ({group_size}), "
                         "with at least two groups for a confidence interval")
    if not model.training:
        raise ValueError("the model is in evaluation mode: call model.train() so noise is drawn")
    bk, xp = model.bk, model.xp
    layers = learned_sigmas(model)
    tile = (group_size,) + (1,) * (x.ndim - 1)
    xs, ys = xp.tile(x, tile), xp.tile(y, group_size)
    loss = SoftmaxCrossEntropy(bk)
    bk.seed([seed, METHODS.index(method)])
    with state_restored(model):
        rows = [xp.concatenate(_ESTIMATORS[method](model, loss, xs, ys, layers, h))
                for _ in range(draws // group_size)]
    return Estimate(method, sigma_names(model), bk.to_host(xp.stack(rows)), group_size)


def small_problem(bk, family="mlp", sizes=(8, 6, 4, 3), activation="relu", samples=4,
                  sigma_range=(0.3, 1.2)):
    """A small model with learned noise, a batch of ``samples`` inputs with random labels, and
    noise levels drawn uniformly from ``sigma_range`` (so they differ per neuron):
    ``(model, x, y)``. ``family="mlp"``: an MLPN of layer ``sizes`` (standard normal inputs);
    ``"cnn"``: a CNN-AN on 1x4x4 images (one channel per convolution, 3 hidden units, 3 classes:
    16 + 4 noise levels on the feature maps, 3 on the dense layer; uniform [0, 1) pixels)."""
    if family == "mlp":
        model, x = zoo.mlp(bk, "mlpn", activation, sizes=sizes), bk.normal((samples, sizes[0]))
    elif family == "cnn":
        model = zoo.cnn(bk, "cnn-an", input_shape=(1, 4, 4), channels=(1, 1), hidden=3, classes=3)
        x = bk.uniform(0, 1, (samples, 1, 4, 4))
    else:
        raise ValueError(f"unknown family {family!r}: expected 'mlp' or 'cnn'")
    for _, layer in learned_sigmas(model):
        layer.params["sigma"][...] = bk.uniform(*sigma_range, layer.params["sigma"].shape)
    classes = model.forward(x).shape[1]
    y = (bk.uniform(0, classes, (samples,)) // 1).astype("int64")
    return model, x, y


def compare_estimators(model, x, y, draws=10000, group_size=500, h=1e-3, seed=0, level=0.99):
    """Run the three estimators on independent draws and compare each with the finite
    differences. Returns ``{"estimates": {method: Estimate}, "rows": [per noise level dict]}``."""
    est = {m: estimate_sigma_gradient(model, x, y, m, draws, group_size, h, seed) for m in METHODS}
    fd = est["finite_difference"]
    sigma = model.bk.to_host(model.xp.concatenate(
        [layer.params["sigma"].reshape(-1) for _, layer in learned_sigmas(model)]))
    z = {m: agreement(est[m], fd, level) for m in ("pathwise", "likelihood_ratio")}
    rows = []
    for i, name in enumerate(fd.names):
        row = {"name": name, "sigma": float(sigma[i])}
        for m, e in est.items():
            row[m] = {"mean": float(e.mean[i]), "half_width": float(e.half_width(level)[i]),
                      "variance": float(e.variance[i])}
            if m in z:
                row[m].update(z=float(z[m][0][i]), agrees=bool(z[m][1][i]))
        rows.append(row)
    return {"estimates": est, "rows": rows, "level": level}
