"""The NumPy path's im2col and col2im (the fast ``conv2d`` of :mod:`manualbp.ops.conv`): the
reference functions of :mod:`manualbp.ops.im2col` in the batch-innermost column layout, without
a padded copy, on threads.

Notation: that of :mod:`manualbp.ops.im2col`, with ``K = C * KH * KW`` (the length of one
patch) and ``P = N * OH * OW`` (the number of patches).

Shapes
------
* image ``x``: ``(N, C, H, W)`` (any memory layout);
* columns ``cols``: ``(C, KH, KW, N, OH, OW)``, read as a ``(K, P)`` matrix whose column
  ``(n, oh, ow)`` is the patch under output pixel ``(oh, ow)`` of sample ``n``::

      cols[c, i, j, n, oh, ow] = x_pad[n, c, oh * SH + i * DH, ow * SW + j * DW]

  where ``x_pad`` is ``x`` with ``PH`` / ``PW`` zeros around it.

A convolution with weights ``w`` ``(C_out, C, KH, KW)`` is then one product,
``w.reshape(C_out, K) @ cols.reshape(K, P)`` of shape ``(C_out, P)`` = ``(C_out, N, OH, OW)``.
Putting ``K`` first and ``(N, OH, OW)`` last makes both this product and the two of the backward
pass (``delta @ cols^T`` for the weights, ``w^T @ delta`` for the columns) plain matrix products
of contiguous or transposed-contiguous operands: no copy before or after the GEMM.

Both functions loop only over the ``KH * KW`` kernel offsets ``(i, j)``; each iteration copies
(im2col) or adds (col2im) one strided slice of the image -- the part of the image that offset
``(i, j)`` sees. Where the slice would read the padding, im2col writes zeros and col2im drops
the contribution, so no padded copy of the image is ever made. col2im is the adjoint (transpose)
of im2col: ``<im2col(x), y> == <x, col2im(y)>``, which is exactly the backward pass of im2col.

On NumPy, large im2col and col2im calls split the channels (or the batch) into blocks run on
several threads (:func:`manualbp.parallel.parallel_blocks`): the blocks touch disjoint memory,
so the result is the same bit for bit, only faster on several cores.
"""
from .im2col import conv_geometry, pair
from ..parallel import parallel_blocks


def _valid(offset, stride, pad, size, out_size):
    """For kernel offset ``offset``: the output range ``[lo, hi)`` whose input index
    ``o * stride + offset - pad`` lies inside ``[0, size)``, and the input slice it reads."""
    lo = max(0, -(-(pad - offset) // stride))
    hi = min(out_size, (size - 1 + pad - offset) // stride + 1)
    if hi <= lo:
        return lo, lo, slice(0, 0)
    start = lo * stride + offset - pad
    return lo, hi, slice(start, start + (hi - lo - 1) * stride + 1, stride)


def kernel_offsets(kh, kw, sh, sw, ph, pw, h, w, oh, ow, dilation=(1, 1)):
    """Yield ``(i, j, output slices, input slices)`` for every kernel offset: the output pixels
    whose tap ``(i, j)`` (at ``(i DH, j DW)`` in the window) lies inside the image, and the image
    pixels they read."""
    dh, dw = dilation
    rows = [_valid(i * dh, sh, ph, h, oh) for i in range(kh)]
    cols = [_valid(j * dw, sw, pw, w, ow) for j in range(kw)]
    for i, (r_lo, r_hi, r_in) in enumerate(rows):
        for j, (c_lo, c_hi, c_in) in enumerate(cols):
            yield i, j, (slice(r_lo, r_hi), slice(c_lo, c_hi)), (r_in, c_in)


def im2col(x, kernel_size, stride, padding, xp, out=None, dilation=(1, 1)):
    """Unfold the patches of ``x`` ``(N, C, H, W)`` into ``cols`` ``(C, KH, KW, N, OH, OW)``.

    ``out`` (optional): an array of that shape to write into, in any memory layout (e.g. a
    transposed view of a ``(C, KH, KW, OH, OW, N)`` buffer); every entry is written. When the
    memory order of ``x`` differs from that of ``out``, ``x`` is first copied once into it, so
    that every slice copy runs over long contiguous stretches.
    """
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, kernel_size, stride, padding, dilation)
    shape = (c, kh, kw, n, oh, ow)
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    elif tuple(out.shape) != shape:
        raise ValueError(f"im2col: out has shape {tuple(out.shape)}, expected {shape}")
    xt = in_layout_of(x.transpose(1, 0, 2, 3), out[:, 0, 0], xp)   # (C, N, H, W) view
    offsets = list(kernel_offsets(kh, kw, sh, sw, ph, pw, h, w, oh, ow, pair(dilation)))

    def unfold(cs, ns):                                        # one block of channels or samples
        for i, j, (r_out, c_out), (r_in, c_in) in offsets:
            dst = out[cs, i, j, ns]                            # (C, N, OH, OW)
            if r_out.stop - r_out.start < oh or c_out.stop - c_out.start < ow:
                _zero_border(dst, r_out, c_out, oh, ow)       # patches over the padding
            dst[:, :, r_out, c_out] = xt[cs, ns, r_in, c_in]

    parallel_blocks(xp, c, n, out.size, unfold)
    return out


def _zero_border(dst, r_out, c_out, oh, ow):
    """Zero the rows and columns of ``dst[..., OH, OW]`` outside ``r_out`` x ``c_out``."""
    dst[:, :, :r_out.start] = 0
    dst[:, :, r_out.stop:] = 0
    dst[:, :, r_out, :c_out.start] = 0
    dst[:, :, r_out, c_out.stop:] = 0


def col2im(cols, x_shape, kernel_size, stride, padding, xp, out=None, dilation=(1, 1)):
    """Fold ``cols`` ``(C, KH, KW, N, OH, OW)`` back into an image of shape ``x_shape``
    ``(N, C, H, W)``, summing where patches overlap and dropping the padding: the adjoint of
    :func:`im2col`, i.e. ``dL/dx`` from ``dL/dcols``.

    ``out`` (optional): an ``(N, C, H, W)`` array (any layout) to write into; by default a new
    one is allocated in the memory order of ``cols`` (``(C, N, H, W)`` for a C-contiguous
    ``cols``).
    """
    n, c, h, w = x_shape
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x_shape, kernel_size, stride, padding, dilation)
    if tuple(cols.shape) != (c, kh, kw, n, oh, ow):
        raise ValueError(f"col2im: cols has shape {tuple(cols.shape)}, expected {(c, kh, kw, n, oh, ow)}")
    if out is None:
        out = empty_in_layout_of((c, n, h, w), cols[:, 0, 0], xp).transpose(1, 0, 2, 3)
    elif tuple(out.shape) != tuple(x_shape):
        raise ValueError(f"col2im: out has shape {tuple(out.shape)}, expected {tuple(x_shape)}")
    xt = out.transpose(1, 0, 2, 3)                             # (C, N, H, W) view
    offsets = list(kernel_offsets(kh, kw, sh, sw, ph, pw, h, w, oh, ow, pair(dilation)))
    # An offset whose slice covers the whole image is assigned first, saving a zero fill.
    full = [k for k, (_, _, _, (r_in, c_in)) in enumerate(offsets)
            if _covers(r_in, h) and _covers(c_in, w)]
    first = offsets.pop(full[0]) if full else None

    def fold(cs, ns):                                          # one block of channels or samples
        if first is None:
            xt[cs, ns] = 0
        else:
            i, j, (r_out, c_out), _ = first
            xt[cs, ns] = cols[cs, i, j, ns, r_out, c_out]
        for i, j, (r_out, c_out), (r_in, c_in) in offsets:
            if r_out.stop > r_out.start and c_out.stop > c_out.start:
                xt[cs, ns, r_in, c_in] += cols[cs, i, j, ns, r_out, c_out]

    parallel_blocks(xp, c, n, cols.size, fold)
    return out


def memory_order(a):
    """Axes of ``a`` from the largest stride to the smallest (its memory order)."""
    return sorted(range(a.ndim), key=lambda k: (-abs(a.strides[k]), k))


def _inverse(perm):
    inv = [0] * len(perm)
    for k, p in enumerate(perm):
        inv[p] = k
    return inv


def empty_in_layout_of(shape, template, xp, dtype=None):
    """A new array of ``shape`` whose memory order is that of ``template`` (same ndim)."""
    order = memory_order(template)
    dtype = template.dtype if dtype is None else dtype
    return xp.empty([shape[k] for k in order], dtype=dtype).transpose(_inverse(order))


def in_layout_of(a, template, xp):
    """``a`` itself if its memory order is that of ``template``, else a copy in that order."""
    order = memory_order(template)
    if a.transpose(order).flags.c_contiguous:
        return a
    return xp.ascontiguousarray(a.transpose(order)).transpose(_inverse(order))


def _covers(s, size):
    return s.start == 0 and (s.step or 1) == 1 and s.stop == size
