"""Pooling and flattening, the ops without parameters between convolutions and dense layers:
``max_pool2d``, ``avg_pool2d`` (PyTorch's defaults: max-pooling pads with ``-inf``, average
pooling with zeros that count, windows that would leave the padded input are dropped),
``global_avg_pool2d`` and ``flatten``. Notation: that of :mod:`manualbp.ops.im2col`."""
from ..parallel import parallel_blocks
from .base import Op
from .im2col import output_size, windows
from .im2col_fast import empty_in_layout_of


def _padded(xp, x, padding, value):
    (ph, pw) = padding
    if not ph and not pw:
        return x
    return xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _cropped(dx, padding):
    """The gradient of the unpadded input: ``dx`` without its border."""
    (ph, pw) = padding
    return dx[:, :, ph:dx.shape[2] - ph, pw:dx.shape[3] - pw]


def _out_size(shape, kernel_size, stride):
    return tuple(output_size(s, k, st, 0) for s, k, st in zip(shape[2:], kernel_size, stride))


def max_pool_forward(xp, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
    """The maximum of each ``KH x KW`` window: ``(N, C, H, W)`` -> ``(N, C, OH, OW)``."""
    x = _padded(xp, x, padding, -float("inf"))
    out_size = _out_size(x.shape, kernel_size, stride)
    views = xp.stack([view for _, _, view in windows(x, kernel_size, stride, out_size)])  # (KH KW, N, C, OH, OW)
    argmax = views.argmax(axis=0)                          # the first maximum wins ties, as PyTorch
    return views.max(axis=0), (argmax, x.shape, kernel_size, stride, padding)


def max_pool_backward(xp, delta, cache, need):
    """Each window's gradient goes to its (first) maximum."""
    argmax, padded_shape, kernel_size, stride, padding = cache
    if not need[0]:
        return (None,)
    dx = xp.zeros(padded_shape, dtype=delta.dtype)
    for k, (_, _, view) in enumerate(windows(dx, kernel_size, stride, delta.shape[2:])):
        view += delta * (argmax == k)                      # to the window's maximum only
    return (_cropped(dx, padding),)


max_pool2d = Op("max_pool2d", ("x",), max_pool_forward, max_pool_backward)


def _is_2x2(kernel_size, stride, padding):
    return (*kernel_size, *stride, *padding) == (2, 2, 2, 2, 0, 0)


def max_pool_forward_2x2(xp, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
    """The common 2x2, stride 2 case on a ``(N, C, OH, 2, OW, 2)`` view of the input (no copy):
    windows ``a b / c d``, ``max(max(a, b), max(c, d))``, and one-hot masks of the first maximum
    (the reference's tie rule) for the backward pass. Output and masks keep the input's memory
    layout; the work is split over threads by channel. Other windows: the reference."""
    if not _is_2x2(kernel_size, stride, padding):
        return max_pool_forward(xp, x, kernel_size, stride, padding)
    n, c = x.shape[:2]
    oh, ow = _out_size(x.shape, kernel_size, stride)
    shape = (n, c, oh, ow)
    m00, m01, m10, m11, right_top, right_bottom, lower = [empty_in_layout_of(shape, x, xp, bool) for _ in range(7)]
    low, out = empty_in_layout_of(shape, x, xp), empty_in_layout_of(shape, x, xp)
    x6 = x[:, :, :2 * oh, :2 * ow].reshape(n, c, oh, 2, ow, 2)

    def block(cs, ns):
        a, b = x6[ns, cs, :, 0, :, 0], x6[ns, cs, :, 0, :, 1]
        c_, d = x6[ns, cs, :, 1, :, 0], x6[ns, cs, :, 1, :, 1]
        top, bottom, lo = out[ns, cs], low[ns, cs], lower[ns, cs]
        rt, rb = right_top[ns, cs], right_bottom[ns, cs]
        xp.greater(b, a, out=rt)                           # ties keep the left (first) element
        xp.greater(d, c_, out=rb)
        xp.maximum(a, b, out=top)
        xp.maximum(c_, d, out=bottom)
        xp.greater(bottom, top, out=lo)                    # ties keep the top row
        xp.logical_not(xp.logical_or(lo, rt, out=m00[ns, cs]), out=m00[ns, cs])
        xp.greater(rt, lo, out=m01[ns, cs])                # right_top and not lower
        xp.greater(lo, rb, out=m10[ns, cs])                # lower and not right_bottom
        xp.logical_and(lo, rb, out=m11[ns, cs])
        xp.maximum(top, bottom, out=top)

    parallel_blocks(xp, c, n, x.size, block)
    return out, ("masks", x, (m00, m01, m10, m11))


def max_pool_backward_2x2(xp, delta, cache, need):
    """``dL/dx`` of the 2x2 case: ``delta`` times each of the four masks, in the input's layout."""
    if not isinstance(cache[0], str):
        return max_pool_backward(xp, delta, cache, need)
    if not need[0]:
        return (None,)
    _, x, masks = cache
    n, c, h, w = x.shape
    oh, ow = delta.shape[2:]
    dx = xp.empty_like(x) if (h, w) == (2 * oh, 2 * ow) else xp.zeros_like(x)
    d6 = dx[:, :, :2 * oh, :2 * ow].reshape(n, c, oh, 2, ow, 2)

    def block(cs, ns):
        for (i, j), mask in zip(((0, 0), (0, 1), (1, 0), (1, 1)), masks):
            xp.multiply(delta[ns, cs], mask[ns, cs], out=d6[ns, cs, :, i, :, j])

    parallel_blocks(xp, c, n, dx.size, block)
    return (dx,)


max_pool2d.kernel("numpy", max_pool_forward_2x2, max_pool_backward_2x2)


def max_pool_backward_channel_major(xp, delta, cache, need):
    """The reference's ``dL/dx``, stored ``(C, N, H, W)`` for the convolution below. Windows that
    tile the input (stride = kernel) get their gradients in one product, as
    ``(C, N, OH, KH, OW, KW)`` blocks; overlapping ones one kernel offset after the other."""
    argmax, (n, c, h, w), (kh, kw), stride, padding = cache
    if not need[0]:
        return (None,)
    oh, ow = delta.shape[2:]
    if stride == (kh, kw):
        blocks = xp.empty((c, n, oh, kh, ow, kw), dtype=delta.dtype)
        offsets = xp.arange(kh * kw).reshape(kh, 1, kw)                 # i * KW + j at (i, j)
        first_max = argmax.transpose(1, 0, 2, 3)[:, :, :, None, :, None] == offsets
        xp.multiply(first_max, delta.transpose(1, 0, 2, 3)[:, :, :, None, :, None], out=blocks)
        dx = tiled = blocks.reshape(c, n, oh * kh, ow * kw)
        if tiled.shape[2:] != (h, w):                      # rows or columns that no window covers
            dx = xp.zeros((c, n, h, w), dtype=delta.dtype)
            dx[:, :, :oh * kh, :ow * kw] = tiled
        return (_cropped(dx.transpose(1, 0, 2, 3), padding),)
    dx = xp.zeros((c, n, h, w), dtype=delta.dtype).transpose(1, 0, 2, 3)
    for k, (_, _, view) in enumerate(windows(dx, (kh, kw), stride, (oh, ow))):
        view += delta * (argmax == k)
    return (_cropped(dx, padding),)


max_pool2d.kernel("cupy", max_pool_forward, max_pool_backward_channel_major)


def avg_pool_forward(xp, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
    """The mean of each ``KH x KW`` window (zero padding counts)."""
    x = _padded(xp, x, padding, 0.0)
    out_size = _out_size(x.shape, kernel_size, stride)
    out = sum(view for _, _, view in windows(x, kernel_size, stride, out_size))
    return out / (kernel_size[0] * kernel_size[1]), (x.shape, kernel_size, stride, padding)


def avg_pool_backward(xp, delta, cache, need):
    """Each window's gradient is shared equally among its elements."""
    padded_shape, kernel_size, stride, padding = cache
    if not need[0]:
        return (None,)
    dx = xp.zeros(padded_shape, dtype=delta.dtype)
    for _, _, view in windows(dx, kernel_size, stride, delta.shape[2:]):
        view += delta / (kernel_size[0] * kernel_size[1])  # an equal share to every element
    return (_cropped(dx, padding),)


avg_pool2d = Op("avg_pool2d", ("x",), avg_pool_forward, avg_pool_backward)


def global_avg_pool_forward(xp, x, keepdims=False):
    """The mean over each channel's ``H x W`` map: ``(N, C, H, W)`` -> ``(N, C)`` (``(N, C, 1, 1)``
    with ``keepdims``)."""
    return x.mean(axis=(2, 3), keepdims=keepdims), (x, keepdims)


def global_avg_pool_backward(xp, delta, cache, need):
    x, keepdims = cache
    if not need[0]:
        return (None,)
    d = delta if keepdims else delta[:, :, None, None]
    return (xp.ones(x.shape, dtype=delta.dtype) * (d / (x.shape[2] * x.shape[3])),)


global_avg_pool2d = Op("global_avg_pool2d", ("x",), global_avg_pool_forward, global_avg_pool_backward)


def global_avg_pool_backward_in_layout(xp, delta, cache, need):
    """The reference's ``dL/dx`` in the input's memory layout (a C-ordered one would force a
    transposed copy in the convolution below)."""
    x, keepdims = cache
    if not need[0]:
        return (None,)
    d = delta if keepdims else delta[:, :, None, None]
    dx = xp.empty_like(x)
    dx[...] = d * (1.0 / (x.shape[2] * x.shape[3]))
    return (dx,)


global_avg_pool2d.kernel("numpy", backward=global_avg_pool_backward_in_layout)
global_avg_pool2d.kernel("cupy", backward=global_avg_pool_backward_in_layout)


def flatten_forward(xp, x):
    """``(N, d1, d2, ...)`` -> ``(N, d1 * d2 * ...)`` in C order (``torch.flatten(x, 1)``)."""
    return x.reshape(x.shape[0], -1), x


def flatten_backward(xp, delta, cache, need):
    return (delta.reshape(cache.shape) if need[0] else None,)


flatten = Op("flatten", ("x",), flatten_forward, flatten_backward)


def flatten_backward_in_layout(xp, delta, cache, need):
    """The reference's ``dL/dx``, copied into the input's memory layout when that is not C
    order, so the layers below keep their layout."""
    x = cache
    if not need[0]:
        return (None,)
    if x.flags.c_contiguous:
        return (delta.reshape(x.shape),)
    dx = xp.empty_like(x)
    dx[...] = delta.reshape(x.shape)
    return (dx,)


flatten.kernel("numpy", backward=flatten_backward_in_layout)
flatten.kernel("cupy", backward=flatten_backward_in_layout)


# --- the rules --------------------------------------------------------------------------------
@max_pool2d.rule("torch")
def max_pool2d_torch(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
    import torch.nn.functional as F
    return F.max_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding))


@avg_pool2d.rule("torch")
def avg_pool2d_torch(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
    import torch.nn.functional as F
    return F.avg_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding))


def _reduce_window(x, kernel_size, stride, padding, init, op):
    from jax import lax
    (ph, pw) = padding
    return lax.reduce_window(x, x.dtype.type(init), op, (1, 1) + tuple(kernel_size), (1, 1) + tuple(stride),
                             [(0, 0), (0, 0), (ph, ph), (pw, pw)])


@max_pool2d.rule("jax")
def max_pool2d_jax(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
    from jax import lax
    return _reduce_window(x, kernel_size, stride, padding, -float("inf"), lax.max)


@avg_pool2d.rule("jax")
def avg_pool2d_jax(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0)):
    from jax import lax
    return _reduce_window(x, kernel_size, stride, padding, 0, lax.add) / (kernel_size[0] * kernel_size[1])


@global_avg_pool2d.rule("torch")
def global_avg_pool2d_torch(x, keepdims=False):
    return x.mean(dim=(2, 3), keepdim=keepdims)


@global_avg_pool2d.rule("jax")
def global_avg_pool2d_jax(x, keepdims=False):
    return x.mean(axis=(2, 3), keepdims=keepdims)


@flatten.rule("torch")
@flatten.rule("jax")
def flatten_rule(x):
    return x.reshape(x.shape[0], -1)


@max_pool2d.imports("MaxPool2d")
@avg_pool2d.imports("AvgPool2d")
def pool_from_torch(imp, m, path, where):
    from ..layers import AvgPool2d, MaxPool2d
    from ..verify.walk import refuse
    if m.ceil_mode:
        refuse(path, m, "ceil_mode=True; expected ceil_mode=False")
    if type(m).__name__ == "MaxPool2d":
        if m.dilation not in (1, (1, 1)) or m.return_indices:
            refuse(path, m, "dilation or return_indices; expected dilation 1 and no indices")
        return MaxPool2d(imp.bk, m.kernel_size, m.stride, m.padding)
    if not m.count_include_pad or m.divisor_override is not None:
        refuse(path, m, "expected count_include_pad=True and no divisor_override")
    return AvgPool2d(imp.bk, m.kernel_size, m.stride, m.padding)


@global_avg_pool2d.imports("AdaptiveAvgPool2d")
def adaptive_avg_pool2d_from_torch(imp, m, path, where):
    from ..layers import AdaptiveAvgPool2d
    from ..verify.walk import refuse
    if m.output_size not in (1, (1, 1)):
        refuse(path, m, f"output_size {m.output_size!r}; expected 1")
    return AdaptiveAvgPool2d(imp.bk, 1)


@flatten.imports("Flatten")
def flatten_from_torch(imp, m, path, where):
    from ..layers import Flatten
    from ..verify.walk import refuse
    if (m.start_dim, m.end_dim) != (1, -1):
        refuse(path, m, f"start_dim {m.start_dim}, end_dim {m.end_dim}; expected 1 and -1")
    return Flatten(imp.bk)
