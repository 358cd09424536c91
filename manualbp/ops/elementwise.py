"""Ops that route, combine or rescale values: ``add``, ``sub`` and ``mul`` of two arrays
(broadcast as NumPy does: two branches join, as in a residual block, or a per-channel gate scales
feature maps), ``scale`` (an array times and plus numbers), ``mean`` and ``total`` over axes,
``normalize`` (fixed per-channel statistics) and ``dropout`` (a given mask)."""
import math

from .base import Op


def summed_to(xp, delta, shape):
    """``delta`` summed back to an input of ``shape`` that broadcasting stretched to
    ``delta.shape``: over the leading axes it lacks and its axes of size 1 (``delta`` itself when
    the shapes agree)."""
    if tuple(delta.shape) == tuple(shape):
        return delta
    new = delta.ndim - len(shape)
    stretched = tuple(new + i for i, n in enumerate(shape) if n == 1 and delta.shape[new + i] != 1)
    return delta.sum(axis=tuple(range(new)) + stretched).reshape(shape)


def add_forward(xp, a, b):
    """``a + b``, broadcast."""
    return a + b, (a.shape, b.shape)


def add_backward(xp, delta, shapes, need):
    """``delta`` reaches both summands (``d(a + b)/da = d(a + b)/db = 1``), each summed back to
    its shape."""
    return tuple(summed_to(xp, delta, shape) if wanted else None for shape, wanted in zip(shapes, need))


add = Op("add", ("a", "b"), add_forward, add_backward)


def add_forward_in_layout(xp, a, b):
    """``a + b`` in ``a``'s memory layout when the shapes agree: CuPy would write it C-ordered,
    and a convolution below would then copy its ``delta`` back into channel-major order."""
    if a.shape != b.shape:
        return add_forward(xp, a, b)
    return xp.add(a, b, out=xp.empty_like(a)), (a.shape, b.shape)


add.kernel("cupy", add_forward_in_layout)


def sub_forward(xp, a, b):
    """``a - b``, broadcast."""
    return a - b, (a.shape, b.shape)


def sub_backward(xp, delta, shapes, need):
    """``dL/da = delta``, ``dL/db = -delta``, each summed back to its input's shape."""
    a_shape, b_shape = shapes
    return ((summed_to(xp, delta, a_shape) if need[0] else None),
            (-summed_to(xp, delta, b_shape) if need[1] else None))


sub = Op("sub", ("a", "b"), sub_forward, sub_backward)


def mul_forward(xp, a, b):
    """``a * b``, broadcast."""
    return a * b, (a, b)


def mul_backward(xp, delta, cache, need):
    """``dL/da = delta * b``, ``dL/db = delta * a``, each summed back to its input's shape."""
    a, b = cache
    return ((summed_to(xp, delta * b, a.shape) if need[0] else None),
            (summed_to(xp, delta * a, b.shape) if need[1] else None))


mul = Op("mul", ("a", "b"), mul_forward, mul_backward)


def scale_forward(xp, x, factor=1.0, offset=0.0):
    """``y = factor * x + offset`` (numbers ``factor`` and ``offset``)."""
    return factor * x + offset, factor


def scale_backward(xp, delta, factor, need):
    """``dL/dx = factor * delta``."""
    return (factor * delta if need[0] else None,)


scale = Op("scale", ("x",), scale_forward, scale_backward)


def mean_forward(xp, x, axes, keepdims=False):
    """``y = x.mean(axes)``: the average over the ``count`` entries of each group of ``axes``."""
    return x.mean(axis=axes, keepdims=keepdims), (x.shape, axes, keepdims)


def mean_backward(xp, delta, cache, need):
    """``dL/dx = delta / count`` at every entry that was averaged."""
    if not need[0]:
        return (None,)
    shape, axes, keepdims = cache
    count = math.prod(shape[a] for a in axes)
    spread = delta if keepdims else xp.expand_dims(delta, axes)
    return (xp.broadcast_to(spread, shape) / count,)


mean = Op("mean", ("x",), mean_forward, mean_backward)


def total_forward(xp, x, axes, keepdims=False):
    """``y = x.sum(axes)``."""
    return x.sum(axis=axes, keepdims=keepdims), (x.shape, axes, keepdims)


def total_backward(xp, delta, cache, need):
    """``dL/dx = delta`` at every entry that was summed (an array of its own, not a view)."""
    if not need[0]:
        return (None,)
    shape, axes, keepdims = cache
    spread = delta if keepdims else xp.expand_dims(delta, axes)
    return (xp.broadcast_to(spread, shape).copy(),)


total = Op("total", ("x",), total_forward, total_backward)


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


@sub.rule("torch")
@sub.rule("jax")
def sub_rule(a, b):
    return a - b


@mul.rule("torch")
@mul.rule("jax")
def mul_rule(a, b):
    return a * b


@scale.rule("torch")
@scale.rule("jax")
def scale_rule(x, factor=1.0, offset=0.0):
    return factor * x + offset


@mean.rule("torch")
def mean_torch(x, axes, keepdims=False):
    return x.mean(dim=axes, keepdim=keepdims)


@mean.rule("jax")
def mean_jax(x, axes, keepdims=False):
    return x.mean(axis=axes, keepdims=keepdims)


@total.rule("torch")
def total_torch(x, axes, keepdims=False):
    return x.sum(dim=axes, keepdim=keepdims)


@total.rule("jax")
def total_jax(x, axes, keepdims=False):
    return x.sum(axis=axes, keepdims=keepdims)


@normalize.rule("torch")
@normalize.rule("jax")
def normalize_rule(x, mean, std):
    return (x - _per_channel(mean, x.ndim)) / _per_channel(std, x.ndim)


@dropout.rule("torch")
@dropout.rule("jax")
def dropout_rule(v, mask):
    return v if mask is None else v * mask


# --- trace rules: ATen's arithmetic with a tensor, or with a Python number (a scale node) --------
def is_number(a):
    return isinstance(a, (int, float))


def scaled(x, factor, offset):
    """``factor * x + offset`` as a node of the ``scale`` op (``(op, inputs, settings)``, what
    another op's trace rule may return), or ``x`` itself when that changes nothing."""
    if factor == 1 and offset == 0:
        return x
    return scale, [x], {"factor": float(factor), "offset": float(offset)}


@add.traces("aten.add.Tensor", "aten.add_.Tensor")
def add_from_aten(call, a, b, alpha=1):
    """``a + alpha * b``."""
    if is_number(b):
        return scaled(a, 1, alpha * b)
    if alpha != 1:
        call.refuse(f"alpha={alpha} with two tensors; expected alpha=1")
    return [a, b], {}


@sub.traces("aten.sub.Tensor", "aten.sub_.Tensor")
def sub_from_aten(call, a, b, alpha=1):
    """``a - alpha * b``."""
    if is_number(b):
        return scaled(a, 1, -alpha * b)
    if alpha != 1:
        call.refuse(f"alpha={alpha} with two tensors; expected alpha=1")
    return [a, b], {}


@mul.traces("aten.mul.Tensor", "aten.mul_.Tensor")
def mul_from_aten(call, a, b):
    if is_number(b):
        return scaled(a, b, 0)
    return [a, b], {}


@scale.traces("aten.div.Tensor", "aten.div_.Tensor")
def div_from_aten(call, x, divisor):
    """``x / divisor`` for a number ``divisor``: ``x * (1 / divisor)``."""
    if not is_number(divisor):
        call.refuse("a tensor divisor; expected a Python number")
    if divisor == 0:
        call.refuse("division by zero; expected a non-zero divisor")
    return scaled(x, 1 / divisor, 0)


@scale.traces("aten.rsub.Scalar")
def rsub_from_aten(call, x, other, alpha=1):
    """``other - alpha * x``."""
    return scaled(x, -alpha, other)


def reduced_axes(call, x, dim, dtype):
    """The axes ``dim`` (an int, a list, or ``None`` / ``[]``: all) of ``x``, non-negative and
    sorted; a ``dtype`` conversion is refused."""
    if dtype is not None:
        call.refuse(f"dtype={dtype}; expected none (the input's own)")
    if dim is None or (not is_number(dim) and len(dim) == 0):
        return tuple(range(x.ndim))
    dims = [dim] if is_number(dim) else dim
    return tuple(sorted({d % x.ndim for d in dims}))


@mean.traces("aten.mean.dim")
def mean_from_aten(call, x, dim=None, keepdim=False, dtype=None):
    return [x], {"axes": reduced_axes(call, x, dim, dtype), "keepdims": bool(keepdim)}


@mean.traces("aten.mean.default")
def mean_all_from_aten(call, x, dtype=None):
    return [x], {"axes": reduced_axes(call, x, None, dtype), "keepdims": False}


@total.traces("aten.sum.dim_IntList")
def total_from_aten(call, x, dim=None, keepdim=False, dtype=None):
    return [x], {"axes": reduced_axes(call, x, dim, dtype), "keepdims": bool(keepdim)}


@total.traces("aten.sum.default")
def total_all_from_aten(call, x, dtype=None):
    return [x], {"axes": reduced_axes(call, x, None, dtype), "keepdims": False}


@dropout.traces("aten.dropout.default", "aten.dropout_.default")
def dropout_from_aten(call, x, p, train):
    """A :class:`~manualbp.layers.Dropout` module (it draws its masks; a comparison hands it
    PyTorch's), in training mode where the call drops (``train``), else in evaluation mode."""
    from ..layers import Dropout
    layer = Dropout(call.bk, p)
    layer.training = bool(train)
    return [x], layer
