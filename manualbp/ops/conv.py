"""``conv2d``: a cross-correlation as PyTorch's ``Conv2d`` computes it -- Eq. (1) for every
neuron of a feature map -- by im2col and one matrix product, and its backward (Eq. 2).

Three paths, one signature: the reference (:mod:`manualbp.ops.im2col`, columns
``(N, C, KH, KW, OH, OW)``); NumPy's, batch-innermost (:mod:`manualbp.ops.im2col_fast`); CuPy's,
channel-major (:func:`columns`). Notation: that of :mod:`manualbp.ops.im2col`.
"""
from . import im2col_fast
from .base import Op, destination, filled, put
from .im2col import col2im, conv_geometry, im2col, windows


def conv_forward(xp, x, weight, bias, stride=(1, 1), padding=(0, 0)):
    """``v = w * x + b``: ``x`` ``(N, C, H, W)``, ``weight`` ``(C_out, C, KH, KW)``, ``bias``
    ``(C_out,)`` or ``None`` -> ``v`` ``(N, C_out, OH, OW)``; each ``v[n, o, oh, ow]`` is the dot
    product of kernel ``o`` with the patch under it."""
    cols = im2col(x, weight.shape[2:], stride, padding, xp)               # (N, C, KH, KW, OH, OW)
    v = xp.tensordot(cols, weight, axes=((1, 2, 3), (1, 2, 3)))          # sum_j theta_ij x_j, Eq. (1)
    v = v.transpose(0, 3, 1, 2)                                          # (N, C_out, OH, OW)
    if bias is not None:
        v = v + bias.reshape(1, -1, 1, 1)                                # theta_i0 * x_0, Eq. (1)
    return v, (cols, weight, x.shape, stride, padding)


def conv_backward(xp, delta, cache, need):
    """``delta = dL/dv`` ``(N, C_out, OH, OW)`` -> ``(dL/dx, dL/dweight, dL/dbias)``."""
    cols, weight, x_shape, stride, padding = cache
    dw = db = dx = None
    if need[1] is not None:                                              # dL/dtheta_ij = delta_i x_j
        dw = xp.tensordot(delta, cols, axes=((0, 2, 3), (0, 4, 5)))
    if need[2] is not None:
        db = delta.sum(axis=(0, 2, 3))                                   # dL/dtheta_i0 = delta_i
    if need[0]:
        dcols = xp.tensordot(delta, weight, axes=(1, 0))                 # sum_j theta_ji delta_j, Eq. (2)
        dcols = dcols.transpose(0, 3, 4, 5, 1, 2)                        # (N, C, KH, KW, OH, OW)
        dx = col2im(dcols, x_shape, weight.shape[2:], stride, padding, xp)
    return dx, dw, db


conv2d = Op("conv2d", ("x", "weight", "bias"), conv_forward, conv_backward)


# --- NumPy: batch innermost --------------------------------------------------------------------
#: Weight size (C_out * K) from which ``dL/dw`` is computed in its own orientation.
DIRECT_GRAD_SIZE = 1 << 19


def _as_maps(a, rows, n, oh, ow):
    """The ``(rows, N OH OW)`` matrix ``a``, its columns ordered ``(OH, OW, N)``, as a
    ``(rows, N, OH, OW)`` view (no copy)."""
    return a.reshape(rows, oh, ow, n).transpose(0, 3, 1, 2)


def conv_forward_batch_inner(xp, x, weight, bias, stride=(1, 1), padding=(0, 0)):
    """The reference's ``v`` as one GEMM ``[w | b] @ [cols; 1]`` (the bias a column of ``w``
    times a row of ones, ``x_0 = 1`` of Eq. 1), the columns ``(K [+ 1], P)`` ordered
    ``(OH, OW, N)``. The output is an ``(N, C_out, OH, OW)`` *view* of the GEMM result, stored
    ``(C_out, OH, OW, N)``: batch innermost, so a pooling window or a kernel offset is a run of
    ``N`` contiguous numbers, the layers between convolutions keep that layout and the ``delta``
    coming back is already in the layout the GEMMs want."""
    n, c = x.shape[:2]
    c_out, _, kh, kw = weight.shape
    oh, ow = conv_geometry(x.shape, (kh, kw), stride, padding)[6:]
    k = c * kh * kw
    cols = xp.empty((k + (bias is not None), n * oh * ow), dtype=x.dtype)
    patches = _as_maps(cols[:k], k, n, oh, ow).reshape(c, kh, kw, n, oh, ow)
    im2col_fast.im2col(x, (kh, kw), stride, padding, xp, out=patches)
    w = weight.reshape(c_out, k)
    if bias is not None:
        cols[k] = 1                                                      # x_0 = 1: the bias input
        w = xp.concatenate([w, bias.reshape(c_out, 1)], axis=1)
    v = _as_maps(xp.matmul(w, cols), c_out, n, oh, ow).transpose(1, 0, 2, 3)   # Eq. (1)
    return v, (cols, weight, tuple(x.shape), stride, padding)


def conv_backward_batch_inner(xp, delta, cache, need):
    """``[dL/dw | dL/db] = delta cols^T`` in one GEMM (the row of ones gives ``dL/db``; for a
    small weight BLAS is faster computing its transpose, a large one is written directly) and
    ``dL/dx = col2im(w^T delta)``."""
    cols, weight, x_shape, stride, padding = cache
    c_out, c, kh, kw = weight.shape
    k, (oh, ow) = c * kh * kw, delta.shape[2:]
    d2 = delta.transpose(1, 2, 3, 0).reshape(c_out, -1)                 # (C_out, P): free in this layout
    dw = db = dx = None
    if need[1] is not None or need[2] is not None:
        if c_out * k >= DIRECT_GRAD_SIZE:
            g = xp.matmul(d2, cols.T)                                    # (C_out, K [+ 1])
        else:
            g = xp.matmul(cols, d2.T).T
        dw = put(need[1], g[:, :k].reshape(weight.shape))
        db = put(need[2], g[:, k]) if need[2] is not None else None
    if need[0]:
        dcols = xp.matmul(weight.reshape(c_out, k).T, d2)                # sum_j theta_ji delta_j, Eq. (2)
        dcols = _as_maps(dcols, k, x_shape[0], oh, ow).reshape(c, kh, kw, x_shape[0], oh, ow)
        dx = im2col_fast.col2im(dcols, x_shape, (kh, kw), stride, padding, xp)
    return dx, dw, db


conv2d.kernel("numpy", conv_forward_batch_inner, conv_backward_batch_inner)


# --- CuPy: channel-major -----------------------------------------------------------------------
def columns(xp, a, kernel, stride, padding, out_size):
    """The columns ``(C KH KW, N OH OW)`` of ``a`` ``(C, N, H, W)`` zero-padded by ``(PH, PW)``,
    copied in one pass from a view of all windows:
    ``cols[c, i, j, n, y, x] = a_pad[c, n, y SH + i, x SW + j]``. (``as_strided``, not
    ``sliding_window_view``: CuPy's checks its window shape on the device and reads the answer
    back, a host sync.)"""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_size
    c, n, h, w = a.shape
    if ph or pw:
        padded = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=a.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = a
        a = padded
    s_c, s_n, s_h, s_w = a.strides
    view = xp.lib.stride_tricks.as_strided(a, (c, kh, kw, n, oh, ow), (s_c, s_h, s_w, s_n, s_h * sh, s_w * sw))
    cols = xp.empty((c, kh, kw, n, oh, ow), dtype=a.dtype)
    cols[...] = view
    return cols.reshape(c * kh * kw, n * oh * ow)


def conv_forward_channel_major(xp, x, weight, bias, stride=(1, 1), padding=(0, 0)):
    """The reference's ``v`` as the GEMM ``W cols``, kept as it comes: stored ``(C_out, N, OH, OW)``,
    shown as ``(N, C_out, OH, OW)``; the layers between convolutions write their results in their
    input's layout, so no step makes a relayout copy."""
    c_out, _, kh, kw = weight.shape
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, (kh, kw), stride, padding)
    cols = columns(xp, x.transpose(1, 0, 2, 3), (kh, kw), (sh, sw), (ph, pw), (oh, ow))
    v = xp.matmul(weight.reshape(c_out, -1), cols).reshape(c_out, x.shape[0], oh, ow)   # Eq. (1)
    if bias is not None:
        v += bias[:, None, None, None]
    return v.transpose(1, 0, 2, 3), (cols, weight, tuple(x.shape), stride, padding)


def conv_backward_channel_major(xp, delta, cache, need):
    """``dL/dW = delta cols^T`` and ``dL/dcols = W^T delta`` (Eq. 2) as GEMMs on views, ``dL/dx``
    stored ``(C, N, H, W)``. With stride 1, padding ``P < K``, a kernel of more than 3 elements
    and ``C_out <= 2 C``, ``dL/dx`` is instead the convolution of ``delta`` padded by
    ``K - 1 - P`` with the kernel flipped and its channel axes swapped (Eq. 2 regrouped): one
    GEMM on columns, 5 launches rather than 2 + KH KW, moving no more memory."""
    cols, weight, x_shape, stride, padding = cache
    c_out, c, kh, kw = weight.shape
    n, _, h, w = x_shape
    (sh, sw), (ph, pw), (oh, ow) = stride, padding, delta.shape[2:]
    d = delta.transpose(1, 0, 2, 3)                                      # (C_out, N, OH, OW)
    flat = d.reshape(c_out, -1)                                          # a view: channel-major
    dw = db = dx = None
    if need[1] is not None:
        dw = destination(need[1])
        g = xp.matmul(flat, cols.T, out=None if dw is None else dw.reshape(c_out, -1))
        dw = g.reshape(weight.shape) if dw is None else dw
    if need[2] is not None:
        db = filled(need[2], flat.sum(axis=1, out=destination(need[2])))
    if not need[0]:
        return dx, dw, db
    if (sh, sw) == (1, 1) and kh * kw > 3 and ph < kh and pw < kw and c_out <= 2 * c:
        flipped = xp.empty((c, c_out, kh, kw), dtype=weight.dtype)
        flipped[...] = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
        delta_cols = columns(xp, d, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), (h, w))
        dx = xp.matmul(flipped.reshape(c, -1), delta_cols)              # Eq. (2)
        return dx.reshape(c, n, h, w).transpose(1, 0, 2, 3), dw, db
    dcols = xp.matmul(weight.reshape(c_out, -1).T, flat).reshape(c, kh, kw, n, oh, ow)   # Eq. (2)
    padded = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=delta.dtype)
    for i, j, view in windows(padded, (kh, kw), (sh, sw), (oh, ow)):
        view += dcols[:, i, j]                                           # col2im, added in place
    return padded[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3), dw, db


conv2d.kernel("cupy", conv_forward_channel_major, conv_backward_channel_major)


@conv2d.rule("torch")
def conv2d_torch(x, weight, bias, stride=(1, 1), padding=(0, 0)):
    import torch.nn.functional as F
    return F.conv2d(x, weight, bias, stride=tuple(stride), padding=tuple(padding))


@conv2d.rule("jax")
def conv2d_jax(x, weight, bias, stride=(1, 1), padding=(0, 0)):
    from jax import lax
    (ph, pw) = padding
    v = lax.conv_general_dilated(x, weight, window_strides=tuple(stride), padding=[(ph, ph), (pw, pw)],
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=lax.Precision.HIGHEST)
    return v if bias is None else v + bias.reshape(1, -1, 1, 1)


@conv2d.imports("Conv2d")
def conv2d_from_torch(imp, m, path, where):
    from ..layers import Conv2d
    from ..verify.walk import refuse
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        refuse(path, m, f"padding {m.padding!r} / padding_mode {m.padding_mode!r}; expected integer zero padding")
    if tuple(m.dilation) != (1, 1) or m.groups != 1:
        refuse(path, m, f"dilation {m.dilation} and groups {m.groups}; expected dilation 1 and groups 1")
    layer = Conv2d(imp.bk, m.in_channels, m.out_channels, m.kernel_size, stride=m.stride, padding=m.padding,
                   bias=m.bias is not None)
    imp.weights(layer, m, path, where)
    return layer
