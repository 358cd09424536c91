"""Certified robustness by randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019), through
the model's own noise layer.

The smoothed classifier ``g(x) = argmax_c P(f(x) = c)`` answers with the class a randomised model
``f`` gives most often. Cohen's Theorem 1: if ``f(x) = u(A x + b + e)`` with ``e ~ N(0, I)`` and
``pA`` bounds the top class's probability from below, ``g`` cannot change within the L2 radius
``PhiInv(pA) / ||A||_2`` of ``x`` (``u`` may itself be random: the counts stay binomial). Two
sources of the smoothing noise:

* :class:`InputNoise` -- Cohen's own setting, ``x + s eps``: ``A = I / s``;
* :class:`FirstNoiseLayer` -- the model's first noise layer, ``v1 = W1 x + b1 + sigma1 * eps``
  (Eq. 1): in the coordinates ``Sigma^(-1/2) v1`` it is smoothing of scale 1, so
  ``A = Sigma^(-1/2) W1``; the later noise layers only make ``u`` random. ``||A||_2`` comes from
  power iteration on ``A^T A``, whose two products are the prefix's forward pass and its
  hand-written input gradient. Where the layers before the noise are not affine (a ReLU, a
  pooling), the product of each affine segment's norm and each non-linearity's Lipschitz
  constant bounds it from above: a smaller radius, still valid (``bound = "upper"``).

:func:`certify` is Cohen's CERTIFY, :func:`predict` his PREDICT; every draw of a batch is one
row of one forward pass (no loop over draws), and the counts are read from the device once.
"""
import math
from statistics import NormalDist

from .layers import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GaussianNoise,
                     GlobalAvgPool2d, LeakyReLU, Linear, MaxPool2d, Normalize, ReLU, Sequential, Sigmoid, Tanh)
from .model import evaluating, input_gradient_only

#: Cohen's defaults: draws to pick the class, draws to bound its probability, failure probability.
N0, N, ALPHA = 100, 100_000, 0.001

AFFINE = (Linear, Conv2d, Normalize, BatchNorm1d, BatchNorm2d, Flatten)


def clopper_pearson(count, n, tail):
    """The Clopper-Pearson bounds ``(low, high)`` of a binomial probability from ``count``
    successes in ``n`` trials, each missing with probability ``tail``: the ``tail`` quantile of
    ``Beta(count, n - count + 1)`` and the ``1 - tail`` one of ``Beta(count + 1, n - count)``."""
    from scipy.stats import beta
    low = 0.0 if count == 0 else float(beta.ppf(tail, count, n - count + 1))
    high = 1.0 if count == n else float(beta.ppf(1 - tail, count + 1, n - count))
    return low, high


def lower_confidence_bound(count, n, alpha):
    """One-sided Clopper-Pearson lower bound at level ``1 - alpha`` (Cohen's ``pA``)."""
    return clopper_pearson(count, n, alpha)[0]


def check_settings(n0, n, alpha):
    """Raise one clear ValueError for draw counts below 1 or a level outside (0, 1)."""
    for name, value in (("n0", n0), ("n", n)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer (noise draws), got {value!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1) (the failure probability), got {alpha!r}")


def lipschitz(module):
    """The L2 Lipschitz constant of a parameter-free non-linearity, or ``None`` when not known."""
    if isinstance(module, (ReLU, Tanh)):
        return 1.0
    if isinstance(module, LeakyReLU):
        return max(1.0, abs(module.slope))
    if isinstance(module, Sigmoid):
        return 0.25
    if isinstance(module, (MaxPool2d, AvgPool2d)) and all(s >= k for s, k in zip(module.stride, module.kernel_size)):
        return 1.0                                  # windows that do not overlap: each value counted once
    if isinstance(module, GlobalAvgPool2d) or isinstance(module, AdaptiveAvgPool2d) and module.output_size == (1, 1):
        return 1.0
    return None


def spectral_norm(bk, chain, input_shape, weight=None, iterations=200, tol=1e-7):
    """``||D A||_2`` of the affine ``chain`` (a :class:`Sequential`; ``A d = chain(d) -
    chain(0)``; ``D`` multiplies by ``weight`` per output neuron, or is the identity), by power
    iteration on ``A^T D^2 A``: ``A`` is the chain's forward pass, ``A^T`` its input gradient
    (Eq. 2). It runs in float64 whatever the model's dtype: ``A v = chain(v) - chain(0)``
    subtracts the biases, which would swamp a small row of ``A`` in float32."""
    xp = bk.xp

    def norm(a):
        return bk.scalar(xp.sqrt((a * a).sum()))

    zero = chain.forward(xp.zeros((1, *input_shape), dtype="float64"))
    start = bk.normal((1, *input_shape)).astype("float64")   # a start with every direction in it
    v = start / norm(start)
    estimate = 0.0
    for _ in range(iterations):
        u = chain.forward(v) - zero                     # A v
        if weight is not None:
            u = u * (weight * weight)                   # D^2 A v
        w = chain.backward(u)                           # A^T D^2 A v
        new = bk.scalar(xp.sqrt((v * w).sum()))       # sqrt(v^T A^T D^2 A v) = ||D A v||
        size = norm(w)
        if size == 0:
            return 0.0
        v = w / size
        if abs(new - estimate) <= tol * max(new, 1e-300):
            return new
        estimate = new
    return estimate


class InputNoise:
    """Cohen's smoothing: ``f(x + s eps)``, ``eps ~ N(0, I)`` on the pixels; ``||A||_2 = 1 / s``.
    The model's own noise layers draw as each is set to in evaluation mode."""

    bound = "exact"
    name = "input"
    noise = None

    def __init__(self, model, scale):
        if not scale > 0:
            raise ValueError(f"input noise scale must be positive, got {scale!r}")
        self.model, self.scale, self.prefix_norm = model, float(scale), 1.0 / float(scale)

    def prepare(self, x):
        """What every draw for the image ``x`` ``(1, ...)`` starts from: the image itself."""
        return x

    def draw(self, x, count):
        """The logits of ``count`` noisy copies of the image ``x``, one forward pass."""
        return self.model.forward(x + self.scale * self.model.bk.normal((count, *x.shape[1:])))


class FirstNoiseLayer:
    """Smoothing by the model's first noise layer: the layers up to its parent (a ``Linear`` or
    ``Conv2d`` whose child ``noise`` draws) are the prefix, run once per image; each draw adds
    ``sigma * eps`` to the prefix's output and runs the rest of the model (its own later noise
    layers drawing). ``model``: a :class:`Sequential` (the MLP and CNN families)."""

    name = "first-noise-layer"
    noise = True

    def __init__(self, model, input_shape=None):
        if not isinstance(model, Sequential):
            raise ValueError("first-noise-layer smoothing needs a chain of layers (Sequential), got "
                             f"{model.kind}")
        layers = list(model.children.items())
        first = next((i for i, (_, m) in enumerate(layers)
                      if isinstance(m.children.get("noise"), GaussianNoise) and m.children["noise"].sigma is not None
                      and m.children["noise"].mode != "off"), None)
        if first is None or not layers[first][1].children["noise"].eval_noise:
            raise ValueError("first-noise-layer smoothing needs a model whose first noise layer draws in "
                             "evaluation mode (eval_noise); this one has none")
        for name, m in layers[:first]:
            if not isinstance(m, AFFINE) and lipschitz(m) is None:
                raise ValueError(f"first-noise-layer smoothing: layer {name!r} ({m.kind}) before the first noise "
                                 "layer is neither affine nor of a known Lipschitz constant")
        self.model, self.layer = model, layers[first][1].children["noise"]
        self.prefix_layers = layers[:first + 1]
        self.prefix = Sequential(model.bk, self.prefix_layers)
        self.rest = Sequential(model.bk, layers[first + 1:])
        self.bound = "exact" if all(isinstance(m, AFFINE) for _, m in self.prefix_layers) else "upper"
        self.input_shape = tuple(input_shape or model.input_shape)
        self.prefix_norm = self.norm()

    def norm(self):
        """``||Sigma^(-1/2) prefix||``: exact for an affine prefix, else the product of each
        affine segment's norm (the last scaled by ``1 / sigma``) and each non-linearity's
        Lipschitz constant."""
        bk = self.model.bk
        with evaluating(self.model, noise=False), input_gradient_only(self.model):
            segment, shape, total = [], self.input_shape, 1.0
            for name, m in self.prefix_layers:
                if isinstance(m, AFFINE):
                    segment.append((name, m))
                    continue
                if segment:
                    chain = Sequential(bk, segment)
                    total *= spectral_norm(bk, chain, shape)
                    shape = tuple(chain.forward(bk.zeros((1, *shape))).shape[1:])
                total *= lipschitz(m)
                shape = tuple(m.forward(bk.zeros((1, *shape))).shape[1:])
                segment = []
            return total * self._scaled_norm(Sequential(bk, segment), shape)

    #: Noise levels this many times apart make float32's ``(sigma_min / sigma)^2`` underflow.
    WIDE = 1e12

    def _scaled_norm(self, chain, shape):
        """``||diag(1 / sigma) A||`` of the last affine segment, computed as
        ``||diag(s / sigma) A|| / s`` with ``s`` the smallest noise level whose row of ``A`` is
        not zero: the weights ``s / sigma`` lie in ``(0, 1]``, so nothing overflows, and the
        neurons whose weights underflow count for nothing beside the one of weight 1. Rows are
        looked at only where it matters (a level of 0, or levels ``WIDE`` apart); a neuron
        without noise whose row is not zero makes the norm infinite (radius 0)."""
        bk = self.model.bk
        level = bk.to_host(self.level()).reshape(-1).astype("float64")
        live = level > 0
        if not live.all() or level.max() > self.WIDE * level[live].min():
            live = self._row_norms(chain, shape, level.size) > 0
            if (level[live] == 0).any():
                return math.inf                     # a neuron without noise that x reaches: radius 0
            if not live.any():
                raise ValueError("the first noise layer's neurons do not depend on the input: no radius")
        smallest = level[live].min()
        weight = bk.asarray((smallest / level.clip(smallest)) * live, dtype="float64").reshape(self.level().shape)
        return spectral_norm(bk, chain, shape, weight=weight) / smallest

    def level(self):
        """The first noise layer's ``sigma`` as its forward pass uses it."""
        sigma = self.layer.sigma
        return self.model.xp.abs(sigma) if self.layer.abs_sigma else sigma

    def _row_norms(self, chain, shape, neurons, chunk=1024):
        """``||A_i||`` of every row of the affine chain's matrix (host): ``A^T e_i`` by backward
        passes over batches of one-hot deltas."""
        bk, xp = self.model.bk, self.model.xp
        norms = []
        for start in range(0, neurons, chunk):
            k = min(chunk, neurons - start)
            h = chain.forward(bk.zeros((k, *shape)))
            onehots = bk.zeros((k, neurons))
            onehots[xp.arange(k), xp.arange(start, start + k)] = 1
            g = chain.backward(onehots.reshape(h.shape))
            norms.append(xp.sqrt((g * g).reshape(k, -1).sum(axis=1)))
        return bk.to_host(xp.concatenate(norms))

    def prepare(self, x):
        """The prefix's output for the image ``x`` ``(1, ...)``, noise off: ``W1 x + b1 (+ mu)``,
        the affine part of Eq. (1), computed once for all its draws."""
        with evaluating(self.model, noise=False):
            return self.prefix.forward(x)

    def draw(self, v, count):
        """The logits of ``count`` draws from the prefix's output ``v``: ``v + sigma * eps``
        (Eq. 1), then the rest of the model."""
        return self.rest.forward(v + self.level() * self.model.bk.normal((count, *v.shape[1:])))


def counts(smoothing, x, n, batch):
    """How often each class wins over ``n`` draws for the image ``x`` ``(1, ...)``, on the device."""
    xp = smoothing.model.xp
    start, total, done = smoothing.prepare(x), None, 0
    with evaluating(smoothing.model, noise=smoothing.noise):
        while done < n:
            k = min(batch, n - done)
            logits = smoothing.draw(start, k)
            c = xp.bincount(logits.argmax(axis=1), minlength=logits.shape[1])
            total = c if total is None else total + c
            done += k
    return total


def certify(smoothing, x, n0=N0, n=N, alpha=ALPHA, batch=1000):
    """Cohen's CERTIFY for one image ``x`` ``(1, ...)``: the class of ``n0`` draws, then
    ``pA`` from ``n`` fresh ones; returns ``(class or None when abstaining, radius, count, pA)``
    with ``radius = PhiInv(pA) / prefix_norm`` (0 when abstaining)."""
    check_settings(n0, n, alpha)
    bk = smoothing.model.bk
    top = int(bk.to_host(counts(smoothing, x, n0, batch)).argmax())
    count = int(bk.to_host(counts(smoothing, x, n, batch))[top])
    p_lower = lower_confidence_bound(count, n, alpha)
    if p_lower < 0.5:
        return None, 0.0, count, p_lower
    return top, NormalDist().inv_cdf(p_lower) / smoothing.prefix_norm, count, p_lower


def predict(smoothing, x, n=N, alpha=ALPHA, batch=1000):
    """Cohen's PREDICT: the top class of ``n`` draws, or ``None`` when a two-sided binomial test
    of its count against the runner-up's cannot reject a tie at level ``alpha``."""
    from scipy.stats import binomtest
    check_settings(1, n, alpha)
    c = smoothing.model.bk.to_host(counts(smoothing, x, n, batch))
    order = c.argsort()[::-1]
    n_a, n_b = int(c[order[0]]), int(c[order[1]]) if len(c) > 1 else 0
    if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
        return None
    return int(order[0])
