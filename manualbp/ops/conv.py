"""``conv2d``: a cross-correlation as PyTorch's ``Conv2d`` computes it -- Eq. (1) for every
neuron of a feature map -- by im2col and one matrix product per group, and its backward (Eq. 2).

With ``groups = G`` the ``C`` input and ``C_out`` output channels fall into ``G`` groups, and
output channel ``o`` sees only the ``C / G`` input channels of its group ``o // (C_out / G)``
(``weight`` ``(C_out, C / G, KH, KW)``); ``G = C`` is a depthwise convolution. ``dilation``
spreads the kernel's taps ``(DH, DW)`` apart.

Three paths, one signature: the reference (:mod:`manualbp.ops.im2col`, columns
``(N, C, KH, KW, OH, OW)``); NumPy's, batch-innermost (:mod:`manualbp.ops.im2col_fast`); CuPy's,
channel-major (:func:`columns`). Both fast paths run a depthwise convolution without columns, as
``KH KW`` multiply-adds of shifted views (:func:`depthwise_forward`). Notation: that of
:mod:`manualbp.ops.im2col`.
"""
from ..parallel import parallel_blocks
from . import im2col_fast
from .base import Op, destination, filled, put
from .im2col import col2im, conv_geometry, im2col, pair, windows


def conv_forward(xp, x, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """``v = w * x + b``: ``x`` ``(N, C, H, W)``, ``weight`` ``(C_out, C / G, KH, KW)``, ``bias``
    ``(C_out,)`` or ``None`` -> ``v`` ``(N, C_out, OH, OW)``; each ``v[n, o, oh, ow]`` is the dot
    product of kernel ``o`` with the patch under it of the channels of its group. With the
    patches ``(N, G, OH OW, C/G KH KW)`` (a patch a row) and the kernels
    ``(G, C/G KH KW, C_out/G)`` (a kernel a column) it is one matrix product per sample and group."""
    cols = im2col(x, weight.shape[2:], stride, padding, xp, dilation)     # (N, C, KH, KW, OH, OW)
    n, _, _, _, oh, ow = cols.shape
    patches = cols.reshape(n, groups, -1, oh * ow).transpose(0, 1, 3, 2)
    kernels = weight.reshape(groups, weight.shape[0] // groups, -1).transpose(0, 2, 1)
    v = xp.matmul(patches, kernels)                                      # sum_j theta_ij x_j, Eq. (1)
    v = v.transpose(0, 1, 3, 2).reshape(n, -1, oh, ow)                   # (N, G C_out/G, OH, OW)
    if bias is not None:
        v = v + bias.reshape(1, -1, 1, 1)                                # theta_i0 * x_0, Eq. (1)
    return v, (patches, kernels, x.shape, weight.shape, stride, padding, dilation)


def conv_backward(xp, delta, cache, need):
    """``delta = dL/dv`` ``(N, C_out, OH, OW)`` -> ``(dL/dx, dL/dweight, dL/dbias)``, group by
    group as the forward: ``dL/dw = delta patches`` summed over the batch, ``dL/dcols = w^T delta``
    folded back by col2im."""
    patches, kernels, x_shape, w_shape, stride, padding, dilation = cache
    n, groups, p, k = patches.shape
    d = delta.reshape(n, groups, -1, p)                                  # (N, G, C_out/G, OH OW)
    dw = db = dx = None
    if need[1] is not None:                                              # dL/dtheta_ij = delta_i x_j
        d_rows = d.transpose(1, 2, 0, 3).reshape(groups, -1, n * p)      # (G, C_out/G, N OH OW)
        patch_rows = patches.transpose(1, 0, 2, 3).reshape(groups, n * p, k)   # (G, N OH OW, C/G KH KW)
        dw = xp.matmul(d_rows, patch_rows).reshape(w_shape)
    if need[2] is not None:
        db = delta.sum(axis=(0, 2, 3))                                   # dL/dtheta_i0 = delta_i
    if need[0]:
        dcols = xp.matmul(kernels, d)                                    # sum_j theta_ji delta_j, Eq. (2)
        dcols = dcols.reshape(n, x_shape[1], *w_shape[2:], *delta.shape[2:])   # (N, C, KH, KW, OH, OW)
        dx = col2im(dcols, x_shape, w_shape[2:], stride, padding, xp, dilation)
    return dx, dw, db


conv2d = Op("conv2d", ("x", "weight", "bias"), conv_forward, conv_backward)


def is_depthwise(x_shape, weight_shape):
    """Whether each input channel is a group of its own (``groups = C > 1``)."""
    return weight_shape[1] == 1 < x_shape[1]


# --- NumPy: batch innermost --------------------------------------------------------------------
#: Weight size (C_out * K) from which ``dL/dw`` is computed in its own orientation.
DIRECT_GRAD_SIZE = 1 << 19


def _as_maps(a, rows, n, oh, ow):
    """The ``(rows, N OH OW)`` matrix ``a``, its columns ordered ``(OH, OW, N)``, as a
    ``(rows, N, OH, OW)`` view (no copy)."""
    return a.reshape(rows, oh, ow, n).transpose(0, 3, 1, 2)


def conv_forward_batch_inner(xp, x, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """The reference's ``v`` as one GEMM ``[w | b] @ [cols; 1]`` (the bias a column of ``w``
    times a row of ones, ``x_0 = 1`` of Eq. 1), the columns ``(K [+ 1], P)`` ordered
    ``(OH, OW, N)``. The output is an ``(N, C_out, OH, OW)`` *view* of the GEMM result, stored
    ``(C_out, OH, OW, N)``: batch innermost, so a pooling window or a kernel offset is a run of
    ``N`` contiguous numbers, the layers between convolutions keep that layout and the ``delta``
    coming back is already in the layout the GEMMs want. ``groups > 1``: :func:`depthwise_forward`
    or :func:`grouped_forward_batch_inner`."""
    if groups > 1:
        if is_depthwise(x.shape, weight.shape):
            return depthwise_forward(xp, x, weight, bias, stride, padding, dilation, batch_inner=True)
        return grouped_forward_batch_inner(xp, x, weight, bias, stride, padding, dilation, groups)
    n, c = x.shape[:2]
    c_out, _, kh, kw = weight.shape
    oh, ow = conv_geometry(x.shape, (kh, kw), stride, padding, dilation)[6:]
    k = c * kh * kw
    cols = xp.empty((k + (bias is not None), n * oh * ow), dtype=x.dtype)
    patches = _as_maps(cols[:k], k, n, oh, ow).reshape(c, kh, kw, n, oh, ow)
    im2col_fast.im2col(x, (kh, kw), stride, padding, xp, out=patches, dilation=dilation)
    w = weight.reshape(c_out, k)
    if bias is not None:
        cols[k] = 1                                                      # x_0 = 1: the bias input
        w = xp.concatenate([w, bias.reshape(c_out, 1)], axis=1)
    v = _as_maps(xp.matmul(w, cols), c_out, n, oh, ow).transpose(1, 0, 2, 3)   # Eq. (1)
    return v, (cols, weight, tuple(x.shape), stride, padding, dilation)


def conv_backward_batch_inner(xp, delta, cache, need):
    """``[dL/dw | dL/db] = delta cols^T`` in one GEMM (the row of ones gives ``dL/db``; for a
    small weight BLAS is faster computing its transpose, a large one is written directly) and
    ``dL/dx = col2im(w^T delta)``."""
    cols, weight, x_shape, stride, padding, dilation = cache
    if weight.shape[1] != x_shape[1]:                                    # groups > 1
        if is_depthwise(x_shape, weight.shape):
            return depthwise_backward(xp, delta, cache, need)
        return grouped_backward_batch_inner(xp, delta, cache, need)
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
        dx = im2col_fast.col2im(dcols, x_shape, (kh, kw), stride, padding, xp, dilation=dilation)
    return dx, dw, db


def grouped_forward_batch_inner(xp, x, weight, bias, stride, padding, dilation, groups):
    """``groups > 1``: the columns ``(K, P)`` (``K = C KH KW``, channels first) are
    ``(G, K / G, P)`` as they stand, so ``v`` is one batched GEMM
    ``(G, C_out/G, K/G) @ (G, K/G, P)``; stored ``(C_out, OH, OW, N)`` as the dense case."""
    n, c = x.shape[:2]
    c_out, _, kh, kw = weight.shape
    oh, ow = conv_geometry(x.shape, (kh, kw), stride, padding, dilation)[6:]
    cols = xp.empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    im2col_fast.im2col(x, (kh, kw), stride, padding, xp, dilation=dilation,
                       out=_as_maps(cols, c * kh * kw, n, oh, ow).reshape(c, kh, kw, n, oh, ow))
    v = xp.matmul(weight.reshape(groups, c_out // groups, -1), cols.reshape(groups, -1, cols.shape[1]))
    v = v.reshape(c_out, -1)                                             # Eq. (1), group by group
    if bias is not None:
        v += bias[:, None]
    v = _as_maps(v, c_out, n, oh, ow).transpose(1, 0, 2, 3)
    return v, (cols, weight, tuple(x.shape), stride, padding, dilation)


def grouped_backward_batch_inner(xp, delta, cache, need):
    """``dL/dw = delta cols^T`` and ``dL/dcols = w^T delta`` (Eq. 2) as batched GEMMs over the
    groups, ``dL/dx`` by the fast col2im."""
    cols, weight, x_shape, stride, padding, dilation = cache
    c_out, cg, kh, kw = weight.shape
    n, c = x_shape[:2]
    groups, (oh, ow) = c // cg, delta.shape[2:]
    d2 = delta.transpose(1, 2, 3, 0).reshape(c_out, -1)                 # (C_out, P): free in this layout
    d3 = d2.reshape(groups, c_out // groups, -1)                         # (G, C_out/G, P)
    cols3 = cols.reshape(groups, -1, cols.shape[1])                      # (G, K/G, P)
    kernels = weight.reshape(groups, c_out // groups, -1)                # (G, C_out/G, K/G)
    dw = db = dx = None
    if need[1] is not None:                                              # dL/dtheta_ij = delta_i x_j
        dw = put(need[1], xp.matmul(d3, cols3.transpose(0, 2, 1)).reshape(weight.shape))
    if need[2] is not None:
        db = put(need[2], d2.sum(axis=1))
    if need[0]:
        dcols = xp.matmul(kernels.transpose(0, 2, 1), d3).reshape(c * kh * kw, -1)   # Eq. (2)
        dcols = _as_maps(dcols, c * kh * kw, n, oh, ow).reshape(c, kh, kw, n, oh, ow)
        dx = im2col_fast.col2im(dcols, x_shape, (kh, kw), stride, padding, xp, dilation=dilation)
    return dx, dw, db


conv2d.kernel("numpy", conv_forward_batch_inner, conv_backward_batch_inner)


# --- depthwise (groups = C), both backends: shifted views ---------------------------------------
def depthwise_forward(xp, x, weight, bias, stride, padding, dilation, batch_inner):
    """``groups = C``, input channel ``c`` with its own ``M = C_out / C`` kernels:
    ``v[n, c M + q, y, x] = b[c M + q] + sum_{i, j} w[c M + q, 0, i, j] x_pad[n, c, y SH + i DH, x SW + j DW]``
    as ``KH KW`` multiply-adds of shifted views of ``x`` (no columns, no GEMM), each tap over the
    output pixels whose input lies inside the image; on threads by channel. The output is stored
    ``(C_out, OH, OW, N)`` (``batch_inner``: NumPy's layout) or ``(C_out, N, OH, OW)`` (CuPy's)."""
    n, c, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    m = c_out // c
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, (kh, kw), stride, padding, dilation)
    if batch_inner:
        out = xp.empty((c, m, oh, ow, n), dtype=x.dtype).transpose(0, 1, 4, 2, 3)   # (C, M, N, OH, OW)
    else:
        out = xp.empty((c, m, n, oh, ow), dtype=x.dtype)
    xc = im2col_fast.in_layout_of(x.transpose(1, 0, 2, 3), out[:, 0], xp)   # (C, N, H, W) in out's layout
    taps = weight.reshape(c, m, kh, kw, 1, 1, 1)
    offsets = list(im2col_fast.kernel_offsets(kh, kw, sh, sw, ph, pw, h, w, oh, ow, pair(dilation)))

    def block(cs, ns):
        out[cs, :, ns] = 0 if bias is None else bias.reshape(c, m, 1, 1, 1)[cs]      # theta_i0 x_0, Eq. (1)
        for i, j, (rows_out, cols_out), (rows_in, cols_in) in offsets:
            for q in range(m):                                          # Eq. (1), one tap at a time
                out[cs, q, ns, rows_out, cols_out] += taps[cs, q, i, j] * xc[cs, ns, rows_in, cols_in]

    parallel_blocks(xp, c, n, out.size * kh * kw, block)
    v = out.transpose(2, 0, 1, 3, 4).reshape(n, c_out, oh, ow)
    return v, (xc, weight, tuple(x.shape), stride, padding, dilation)


def depthwise_backward(xp, delta, cache, need):
    """``dL/dw[c M + q, 0, i, j] = sum_{n, y, x} delta[n, c M + q, y, x] x_pad[n, c, y SH + i DH, x SW + j DW]``
    and ``dL/dx``: ``delta`` sent back through the same taps (Eq. 2), shifted views again; on
    threads by channel (each channel's ``dL/dw`` sums over the whole batch). ``dL/dx`` is stored as
    the forward's ``x``."""
    xc, weight, x_shape, stride, padding, dilation = cache
    n, c, h, w = x_shape
    c_out, _, kh, kw = weight.shape
    m = c_out // c
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x_shape, (kh, kw), stride, padding, dilation)
    db = put(need[2], delta.sum(axis=(0, 2, 3))) if need[2] is not None else None
    if not need[0] and need[1] is None:
        return None, None, db
    d = delta.transpose(1, 0, 2, 3).reshape(c, m, n, oh, ow)
    taps = weight.reshape(c, m, kh, kw, 1, 1, 1)
    dw = None if need[1] is None else xp.empty_like(weight) if need[1] is True else need[1]
    grid = None if dw is None else dw.reshape(c, m, kh, kw)
    dxc = im2col_fast.empty_in_layout_of((c, n, h, w), xc, xp) if need[0] else None
    offsets = list(im2col_fast.kernel_offsets(kh, kw, sh, sw, ph, pw, h, w, oh, ow, pair(dilation)))

    def block(cs, _):
        if dxc is not None:
            dxc[cs] = 0
        for i, j, (rows_out, cols_out), (rows_in, cols_in) in offsets:
            for q in range(m):
                seen = d[cs, q, :, rows_out, cols_out]                  # the deltas tap (i, j) reached
                if grid is not None:                                    # dL/dtheta_ij = delta_i x_j
                    grid[cs, q, i, j] = (seen * xc[cs, :, rows_in, cols_in]).sum(axis=(1, 2, 3))
                if dxc is not None:                                     # sum_j theta_ji delta_j, Eq. (2)
                    dxc[cs, :, rows_in, cols_in] += taps[cs, q, i, j] * seen

    parallel_blocks(xp, c, 1, d.size * kh * kw, block)
    return None if dxc is None else dxc.transpose(1, 0, 2, 3), dw, db


# --- CuPy: channel-major -----------------------------------------------------------------------
def columns(xp, a, kernel, stride, padding, out_size, dilation=(1, 1)):
    """The columns ``(C KH KW, N OH OW)`` of ``a`` ``(C, N, H, W)`` zero-padded by ``(PH, PW)``,
    copied in one pass from a view of all windows:
    ``cols[c, i, j, n, y, x] = a_pad[c, n, y SH + i DH, x SW + j DW]``. (``as_strided``, not
    ``sliding_window_view``: CuPy's checks its window shape on the device and reads the answer
    back, a host sync.)"""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow), (dh, dw) = kernel, stride, padding, out_size, pair(dilation)
    c, n, h, w = a.shape
    if ph or pw:
        padded = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=a.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = a
        a = padded
    s_c, s_n, s_h, s_w = a.strides
    view = xp.lib.stride_tricks.as_strided(a, (c, kh, kw, n, oh, ow),
                                           (s_c, s_h * dh, s_w * dw, s_n, s_h * sh, s_w * sw))
    cols = xp.empty((c, kh, kw, n, oh, ow), dtype=a.dtype)
    cols[...] = view
    return cols.reshape(c * kh * kw, n * oh * ow)


def conv_forward_channel_major(xp, x, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    """The reference's ``v`` as the GEMM ``W cols``, kept as it comes: stored ``(C_out, N, OH, OW)``,
    shown as ``(N, C_out, OH, OW)``; the layers between convolutions write their results in their
    input's layout, so no step makes a relayout copy. ``groups > 1``: one batched GEMM over the
    groups, or :func:`depthwise_forward`."""
    if groups > 1 and is_depthwise(x.shape, weight.shape):
        return depthwise_forward(xp, x, weight, bias, stride, padding, dilation, batch_inner=False)
    c_out, _, kh, kw = weight.shape
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, (kh, kw), stride, padding, dilation)
    cols = columns(xp, x.transpose(1, 0, 2, 3), (kh, kw), (sh, sw), (ph, pw), (oh, ow), dilation)
    if groups > 1:
        v = xp.matmul(weight.reshape(groups, c_out // groups, -1), cols.reshape(groups, -1, cols.shape[1]))
        v = v.reshape(c_out, x.shape[0], oh, ow)                         # Eq. (1), group by group
    else:
        v = xp.matmul(weight.reshape(c_out, -1), cols).reshape(c_out, x.shape[0], oh, ow)   # Eq. (1)
    if bias is not None:
        v += bias[:, None, None, None]
    return v.transpose(1, 0, 2, 3), (cols, weight, tuple(x.shape), stride, padding, dilation)


def conv_backward_channel_major(xp, delta, cache, need):
    """``dL/dW = delta cols^T`` and ``dL/dcols = W^T delta`` (Eq. 2) as GEMMs on views, ``dL/dx``
    stored ``(C, N, H, W)``. With stride 1, no dilation, padding ``P < K``, a kernel of more than
    3 elements and ``C_out <= 2 C``, ``dL/dx`` is instead the convolution of ``delta`` padded by
    ``K - 1 - P`` with the kernel flipped and its channel axes swapped (Eq. 2 regrouped): one
    GEMM on columns, 5 launches rather than 2 + KH KW, moving no more memory."""
    cols, weight, x_shape, stride, padding, dilation = cache
    if weight.shape[1] != x_shape[1]:                                    # groups > 1
        if is_depthwise(x_shape, weight.shape):
            return depthwise_backward(xp, delta, cache, need)
        return grouped_backward_channel_major(xp, delta, cache, need)
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
    if (sh, sw) == (1, 1) and pair(dilation) == (1, 1) and kh * kw > 3 and ph < kh and pw < kw and c_out <= 2 * c:
        flipped = xp.empty((c, c_out, kh, kw), dtype=weight.dtype)
        flipped[...] = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
        delta_cols = columns(xp, d, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), (h, w))
        dx = xp.matmul(flipped.reshape(c, -1), delta_cols)              # Eq. (2)
        return dx.reshape(c, n, h, w).transpose(1, 0, 2, 3), dw, db
    dcols = xp.matmul(weight.reshape(c_out, -1).T, flat).reshape(c, kh, kw, n, oh, ow)   # Eq. (2)
    return _fold_channel_major(xp, dcols, x_shape, stride, padding, dilation), dw, db


def grouped_backward_channel_major(xp, delta, cache, need):
    """``groups > 1``: ``dL/dW`` and ``dL/dcols`` (Eq. 2) as batched GEMMs over the groups;
    ``dL/dW`` computed transposed, ``cols delta^T``: CuPy copies a transposed stack before a
    batched GEMM, and ``delta`` is the smaller operand."""
    cols, weight, x_shape, stride, padding, dilation = cache
    c_out, cg, kh, kw = weight.shape
    n, c = x_shape[:2]
    groups, (oh, ow) = c // cg, delta.shape[2:]
    flat = delta.transpose(1, 0, 2, 3).reshape(c_out, -1)                # a view: channel-major
    d3 = flat.reshape(groups, c_out // groups, -1)                       # (G, C_out/G, P)
    cols3 = cols.reshape(groups, -1, cols.shape[1])                      # (G, K/G, P)
    dw = db = dx = None
    if need[1] is not None:                                              # dL/dtheta_ij = delta_i x_j
        g = xp.matmul(cols3, d3.transpose(0, 2, 1))                      # (G, K/G, C_out/G)
        dw = put(need[1], g.transpose(0, 2, 1).reshape(weight.shape))
    if need[2] is not None:
        db = filled(need[2], flat.sum(axis=1, out=destination(need[2])))
    if need[0]:
        kernels = weight.reshape(groups, c_out // groups, -1)
        dcols = xp.matmul(kernels.transpose(0, 2, 1), d3).reshape(c, kh, kw, n, oh, ow)   # Eq. (2)
        dx = _fold_channel_major(xp, dcols, x_shape, stride, padding, dilation)
    return dx, dw, db


def _fold_channel_major(xp, dcols, x_shape, stride, padding, dilation):
    """col2im of ``dcols`` ``(C, KH, KW, N, OH, OW)``, added in place one kernel offset at a
    time: ``dL/dx`` stored ``(C, N, H, W)``."""
    c, kh, kw, n, oh, ow = dcols.shape
    h, w = x_shape[2:]
    (ph, pw) = padding
    padded = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype)
    for i, j, view in windows(padded, (kh, kw), stride, (oh, ow), pair(dilation)):
        view += dcols[:, i, j]                                           # col2im, added in place
    return padded[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)


conv2d.kernel("cupy", conv_forward_channel_major, conv_backward_channel_major)


# --- the rules --------------------------------------------------------------------------------
@conv2d.rule("torch")
def conv2d_torch(x, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    import torch.nn.functional as F
    return F.conv2d(x, weight, bias, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                    groups=groups)


@conv2d.rule("jax")
def conv2d_jax(x, weight, bias, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1):
    from jax import lax
    (ph, pw) = padding
    v = lax.conv_general_dilated(x, weight, window_strides=tuple(stride), padding=[(ph, ph), (pw, pw)],
                                 rhs_dilation=tuple(dilation), dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                 feature_group_count=groups, precision=lax.Precision.HIGHEST)
    return v if bias is None else v + bias.reshape(1, -1, 1, 1)


def aten_pair(call, value, what):
    """``(a, b)`` from an ATen int or list of 1 or 2 ints (one entry: both); refuses anything else."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        call.refuse(f"{what} {value!r}; expected an int or a list of 1 or 2 ints")
    return tuple(values)


@conv2d.traces("aten.conv2d.default")
def conv2d_from_aten(call, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    if x.ndim != 4:
        call.refuse(f"an input of shape {x.shape}; expected a batch (N, C, H, W)")
    return [x, weight, bias], {"stride": aten_pair(call, stride, "stride"),
                               "padding": aten_pair(call, padding, "padding"),
                               "dilation": aten_pair(call, dilation, "dilation"), "groups": int(groups)}


@conv2d.traces("aten.conv2d.padding")
def conv2d_padding_from_aten(call, x, weight, bias=None, stride=1, padding="valid", dilation=1, groups=1):
    """String padding: ``"valid"`` is none; ``"same"`` (stride 1) pads ``D (K - 1)`` in all,
    half on each side (refused where that is odd: PyTorch puts the extra row or column at the
    bottom or right)."""
    dilation = aten_pair(call, dilation, "dilation")
    if padding == "valid":
        return conv2d_from_aten(call, x, weight, bias, stride, 0, dilation, groups)
    totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
    if padding != "same" or any(t % 2 for t in totals):
        call.refuse(f"padding {padding!r} with kernel {tuple(weight.shape[2:])} and dilation {dilation}; expected "
                    f"'valid', or 'same' with an even total padding D (K - 1)")
    return conv2d_from_aten(call, x, weight, bias, stride, [t // 2 for t in totals], dilation, groups)


@conv2d.traces("aten.convolution.default")
def convolution_from_aten(call, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        call.refuse("a transposed convolution; expected transposed=False")
    if weight.ndim != 4:
        call.refuse(f"a weight of shape {weight.shape}; expected a 2-D convolution's (C_out, C / G, KH, KW)")
    return conv2d_from_aten(call, x, weight, bias, stride, padding, dilation, groups)
