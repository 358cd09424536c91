"""Pooling and flattening, the ops without parameters between convolutions and dense layers:
``max_pool2d``, ``avg_pool2d``, ``adaptive_avg_pool2d``, ``global_avg_pool2d`` and ``flatten``.
Notation: that of :mod:`manualbp.ops.im2col`.

Windows as PyTorch places them: max-pooling pads with ``-inf``, average pooling with zeros.
Windows that would leave the padded input are dropped (``OH = (H + 2 PH - KH) // SH + 1``), or,
with ``ceil_mode``, kept while they start inside the input or its top (left) padding
(``OH = ceil((H + 2 PH - KH) / SH) + 1``, less one if the last window would start at or below
``H + PH``): the part of such a last window below (right of) the padded input is padding too.
Average pooling divides each window's sum by the elements it counts: those inside the padded
input (``count_include_pad``, PyTorch's default) or those inside the input itself.
"""
from ..parallel import parallel_blocks
from .base import Op
from .conv import aten_pair
from .im2col import output_size, windows
from .im2col_fast import empty_in_layout_of


def pool_output_size(size, kernel, stride, padding, ceil_mode=False):
    """Output length of windows of ``kernel`` moved by ``stride`` over ``size + 2 padding``,
    PyTorch's rule with ``ceil_mode``."""
    if not ceil_mode:
        return output_size(size, kernel, stride, padding)
    out = -(-(size + 2 * padding - kernel) // stride) + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def pool_geometry(shape, kernel_size, stride, padding, ceil_mode):
    """``((OH, OW), ((top, bottom), (left, right)))``: the output size and the padding that holds
    every window: ``PH`` on top, ``PH`` plus what the last window of ``ceil_mode`` needs below."""
    out_size, pads = [], []
    for size, k, s, p in zip(shape[2:], kernel_size, stride, padding):
        out = pool_output_size(size, k, s, p, ceil_mode)
        out_size.append(out)
        pads.append((p, max(p, (out - 1) * s + k - size - p)))
    return tuple(out_size), tuple(pads)


def _padded(xp, x, pads, value):
    if pads == ((0, 0), (0, 0)):
        return x
    return xp.pad(x, ((0, 0), (0, 0), *pads), constant_values=value)


def _cropped(dx, pads):
    """The gradient of the unpadded input: ``dx`` without its border."""
    (top, bottom), (left, right) = pads
    return dx[:, :, top:dx.shape[2] - bottom, left:dx.shape[3] - right]


def max_pool_forward(xp, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False):
    """The maximum of each ``KH x KW`` window: ``(N, C, H, W)`` -> ``(N, C, OH, OW)``."""
    out_size, pads = pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode)
    x = _padded(xp, x, pads, -float("inf"))
    views = xp.stack([view for _, _, view in windows(x, kernel_size, stride, out_size)])  # (KH KW, N, C, OH, OW)
    argmax = views.argmax(axis=0)                          # the first maximum wins ties, as PyTorch
    return views.max(axis=0), (argmax, x.shape, kernel_size, stride, pads)


def max_pool_backward(xp, delta, cache, need):
    """Each window's gradient goes to its (first) maximum."""
    argmax, padded_shape, kernel_size, stride, pads = cache
    if not need[0]:
        return (None,)
    dx = xp.zeros(padded_shape, dtype=delta.dtype)
    for k, (_, _, view) in enumerate(windows(dx, kernel_size, stride, delta.shape[2:])):
        view += delta * (argmax == k)                      # to the window's maximum only
    return (_cropped(dx, pads),)


max_pool2d = Op("max_pool2d", ("x",), max_pool_forward, max_pool_backward)


def _is_2x2(kernel_size, stride, padding):
    return (*kernel_size, *stride, *padding) == (2, 2, 2, 2, 0, 0)


def max_pool_forward_2x2(xp, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False):
    """The common 2x2, stride 2 case on a ``(N, C, OH, 2, OW, 2)`` view of the input (no copy):
    windows ``a b / c d``, ``max(max(a, b), max(c, d))``, and one-hot masks of the first maximum
    (the reference's tie rule) for the backward pass. Output and masks keep the input's memory
    layout; the work is split over threads by channel. Other windows, and a last partial window
    of ``ceil_mode``: the reference."""
    (oh, ow), pads = pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode)
    if not _is_2x2(kernel_size, stride, padding) or pads != ((0, 0), (0, 0)):
        return max_pool_forward(xp, x, kernel_size, stride, padding, ceil_mode)
    n, c = x.shape[:2]
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
    argmax, (n, c, h, w), (kh, kw), stride, pads = cache
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
        return (_cropped(dx.transpose(1, 0, 2, 3), pads),)
    dx = xp.zeros((c, n, h, w), dtype=delta.dtype).transpose(1, 0, 2, 3)
    for k, (_, _, view) in enumerate(windows(dx, (kh, kw), stride, (oh, ow))):
        view += delta * (argmax == k)
    return (_cropped(dx, pads),)


max_pool2d.kernel("cupy", max_pool_forward, max_pool_backward_channel_major)


def window_counts(xp, size, kernel_size, stride, padding, ceil_mode, count_include_pad, dtype):
    """``(OH, OW)``: how many elements each window of an ``(H, W)`` map averages -- those inside
    the padded input (``count_include_pad``) or inside the input -- as window sums of a mask of
    ones."""
    out_size, pads = pool_geometry((1, 1, *size), kernel_size, stride, padding, ceil_mode)
    if count_include_pad:
        counted = xp.pad(xp.ones([s + 2 * p for s, p in zip(size, padding)], dtype=dtype),
                         [(0, b - t) for t, b in pads])
    else:
        counted = xp.pad(xp.ones(size, dtype=dtype), pads)
    return sum(view for _, _, view in windows(counted, kernel_size, stride, out_size))


def avg_pool_forward(xp, x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False,
                     count_include_pad=True):
    """The mean of each ``KH x KW`` window: its sum over the zero-padded input divided by the
    number of elements it counts (``KH KW`` for a window inside the padded input, with
    ``count_include_pad``)."""
    out_size, pads = pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode)
    counts = window_counts(xp, x.shape[2:], kernel_size, stride, padding, ceil_mode, count_include_pad, x.dtype)
    x = _padded(xp, x, pads, 0.0)
    out = sum(view for _, _, view in windows(x, kernel_size, stride, out_size))
    return out / counts, (counts, x.shape, kernel_size, stride, pads)


def avg_pool_backward(xp, delta, cache, need):
    """Each window's gradient is shared equally among the elements it counts (padding's shares
    are dropped)."""
    counts, padded_shape, kernel_size, stride, pads = cache
    if not need[0]:
        return (None,)
    dx = xp.zeros(padded_shape, dtype=delta.dtype)
    for _, _, view in windows(dx, kernel_size, stride, delta.shape[2:]):
        view += delta / counts                             # an equal share to every element
    return (_cropped(dx, pads),)


avg_pool2d = Op("avg_pool2d", ("x",), avg_pool_forward, avg_pool_backward)


def averaging_matrix(xp, size, out, dtype):
    """``P`` ``(out, size)``: row ``i`` averages PyTorch's adaptive window
    ``[floor(i size / out), ceil((i + 1) size / out))``."""
    i = xp.arange(out)[:, None]
    start, end = (i * size) // out, -((-(i + 1) * size) // out)
    k = xp.arange(size)[None, :]
    return (((k >= start) & (k < end)) / (end - start)).astype(dtype)


def averaging_matrices(xp, shape, output_size, dtype):
    """``(P_h, P_w)`` of an ``(N, C, H, W)`` input; an output size ``None`` keeps that size."""
    return tuple(averaging_matrix(xp, size, size if out is None else out, dtype)
                 for size, out in zip(shape[2:], output_size))


def adaptive_avg_pool_forward(xp, x, output_size=(1, 1)):
    """The mean over each of PyTorch's adaptive windows, ``(N, C, H, W)`` -> ``(N, C, OH, OW)``:
    rows then columns, ``out = P_h x P_w^T`` (any ``OH``, ``OW``: windows overlap or repeat
    where they do not divide the input)."""
    p_h, p_w = averaging_matrices(xp, x.shape, output_size, x.dtype)
    return xp.matmul(xp.matmul(p_h, x), p_w.T), (p_h, p_w)


def adaptive_avg_pool_backward(xp, delta, cache, need):
    """``dL/dx = P_h^T delta P_w``."""
    p_h, p_w = cache
    return (xp.matmul(xp.matmul(p_h.T, delta), p_w) if need[0] else None,)


adaptive_avg_pool2d = Op("adaptive_avg_pool2d", ("x",), adaptive_avg_pool_forward, adaptive_avg_pool_backward)


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
def max_pool2d_torch(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False):
    import torch.nn.functional as F
    return F.max_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode=ceil_mode)


@avg_pool2d.rule("torch")
def avg_pool2d_torch(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False, count_include_pad=True):
    import torch.nn.functional as F
    return F.avg_pool2d(x, tuple(kernel_size), tuple(stride), tuple(padding), ceil_mode=ceil_mode,
                        count_include_pad=count_include_pad)


@adaptive_avg_pool2d.rule("torch")
def adaptive_avg_pool2d_torch(x, output_size=(1, 1)):
    import torch.nn.functional as F
    return F.adaptive_avg_pool2d(x, tuple(output_size))


def _reduce_window(x, kernel_size, stride, padding, ceil_mode, init, op):
    from jax import lax
    pads = pool_geometry(x.shape, kernel_size, stride, padding, ceil_mode)[1]
    return lax.reduce_window(x, x.dtype.type(init), op, (1, 1) + tuple(kernel_size), (1, 1) + tuple(stride),
                             [(0, 0), (0, 0), *pads])


@max_pool2d.rule("jax")
def max_pool2d_jax(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False):
    from jax import lax
    return _reduce_window(x, kernel_size, stride, padding, ceil_mode, -float("inf"), lax.max)


@avg_pool2d.rule("jax")
def avg_pool2d_jax(x, kernel_size=(2, 2), stride=(2, 2), padding=(0, 0), ceil_mode=False, count_include_pad=True):
    import jax.numpy as jnp
    from jax import lax
    counts = window_counts(jnp, x.shape[2:], kernel_size, stride, padding, ceil_mode, count_include_pad, x.dtype)
    return _reduce_window(x, kernel_size, stride, padding, ceil_mode, 0, lax.add) / counts


@adaptive_avg_pool2d.rule("jax")
def adaptive_avg_pool2d_jax(x, output_size=(1, 1)):
    import jax.numpy as jnp
    p_h, p_w = averaging_matrices(jnp, x.shape, output_size, x.dtype)
    return jnp.matmul(jnp.matmul(p_h, x, precision="highest"), p_w.T, precision="highest")


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


def _batch_of_maps(call, x):
    if x.ndim != 4:
        call.refuse(f"an input of shape {x.shape}; expected a batch of feature maps (N, C, H, W)")


@max_pool2d.traces("aten.max_pool2d.default")
def max_pool2d_from_aten(call, x, kernel_size, stride=(), padding=0, dilation=1, ceil_mode=False):
    _batch_of_maps(call, x)
    if aten_pair(call, dilation, "dilation") != (1, 1):
        call.refuse(f"dilation {dilation!r}; expected 1")
    kernel = aten_pair(call, kernel_size, "kernel_size")
    return [x], {"kernel_size": kernel, "stride": aten_pair(call, stride, "stride") if stride else kernel,
                 "padding": aten_pair(call, padding, "padding"), "ceil_mode": bool(ceil_mode)}


@avg_pool2d.traces("aten.avg_pool2d.default")
def avg_pool2d_from_aten(call, x, kernel_size, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                         divisor_override=None):
    _batch_of_maps(call, x)
    if divisor_override is not None:
        call.refuse(f"divisor_override {divisor_override!r}; expected None")
    kernel = aten_pair(call, kernel_size, "kernel_size")
    return [x], {"kernel_size": kernel, "stride": aten_pair(call, stride, "stride") if stride else kernel,
                 "padding": aten_pair(call, padding, "padding"), "ceil_mode": bool(ceil_mode),
                 "count_include_pad": bool(count_include_pad)}


@adaptive_avg_pool2d.traces("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default")
def adaptive_avg_pool2d_from_aten(call, x, output_size):
    """An :class:`~manualbp.layers.AdaptiveAvgPool2d`: output size 1 runs global average pooling
    (and its fast kernels)."""
    from ..layers import AdaptiveAvgPool2d
    _batch_of_maps(call, x)
    return [x], AdaptiveAvgPool2d(call.bk, aten_pair(call, output_size, "output_size"))
