"""Ops that route or rescale values: ``add`` (two branches join, as in a residual block),
``normalize`` (fixed per-channel statistics) and ``dropout`` (a given mask)."""
from .base import Op


def add_forward(xp, a, b):
    """``a + b``."""
    return a + b, None


def add_backward(xp, delta, cache, need):
    """``delta`` reaches both summands unchanged: ``d(a + b)/da = d(a + b)/db = 1``."""
    return (delta if need[0] else None), (delta if need[1] else None)


add = Op("add", ("a", "b"), add_forward, add_backward)


def add_forward_in_layout(xp, a, b):
    """``a + b`` in ``a``'s memory layout: CuPy would write it C-ordered, and a convolution below
    would then copy its ``delta`` back into channel-major order."""
    return xp.add(a, b, out=xp.empty_like(a)), None


add.kernel("cupy", add_forward_in_layout)


def _per_channel(a, ndim):
    return a.reshape((1, -1) + (1,) * (ndim - 2))


def normalize_forward(xp, x, mean, std):
    """``y = (x - mean) / std`` per channel (axis 1)."""
    return (x - _per_channel(mean, x.ndim)) / _per_channel(std, x.ndim), std


def normalize_backward(xp, delta, std, need):
    """``dL/dx = delta / std``; the statistics are not trained."""
    return (delta / _per_channel(std, delta.ndim) if need[0] else None), None, None


normalize = Op("normalize", ("x", "mean", "std"), normalize_forward, normalize_backward)


def dropout_forward(xp, v, mask):
    """``v * mask``, or ``v`` itself when ``mask`` is ``None`` (evaluation)."""
    return (v if mask is None else v * mask), mask


def dropout_backward(xp, delta, mask, need):
    """``dL/dv = mask * delta`` (Eq. 2)."""
    if not need[0]:
        return None, None
    return (delta if mask is None else delta * mask), None


dropout = Op("dropout", ("v", "mask"), dropout_forward, dropout_backward)


@add.rule("torch")
@add.rule("jax")
def add_rule(a, b):
    return a + b


@normalize.rule("torch")
@normalize.rule("jax")
def normalize_rule(x, mean, std):
    return (x - _per_channel(mean, x.ndim)) / _per_channel(std, x.ndim)


@dropout.rule("torch")
@dropout.rule("jax")
def dropout_rule(v, mask):
    return v if mask is None else v * mask


@dropout.imports("Dropout")
def dropout_from_torch(imp, m, path, where):
    from ..layers import Dropout
    return Dropout(imp.bk, m.p)
