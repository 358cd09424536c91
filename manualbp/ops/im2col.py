"""im2col and col2im: a convolution as one matrix product, plus a naive convolution for teaching.

Notation
--------
========  ==================================================================
N         batch size
C         input channels
H, W      input height and width
KH, KW    kernel height and width
SH, SW    strides (vertical, horizontal)
PH, PW    zero padding added on each side (top and bottom, left and right)
DH, DW    dilation: the rows (columns) between two kernel taps, 1 for a dense kernel
OH, OW    output height and width: ``OH = (H + 2 PH - DH (KH - 1) - 1) // SH + 1``, likewise ``OW``
========  ==================================================================

im2col unfolds the image ``x`` ``(N, C, H, W)`` into the columns ``cols``
``(N, C, KH, KW, OH, OW)``, the patch under every output pixel::

    cols[n, c, i, j, oh, ow] = x_pad[n, c, oh * SH + i * DH, ow * SW + j * DW]

where ``x_pad`` is ``x`` with ``PH`` / ``PW`` zeros around it. A convolution is then one
product over ``(C, KH, KW)``, and col2im -- the adjoint of im2col, summing where patches overlap
-- takes ``dL/dcols`` back to ``dL/dx``. Both loop only over the ``KH * KW`` kernel offsets
``(i, j)`` (:func:`windows`), each copying (or adding) one strided slice of the image.
"""


def pair(value, name="value"):
    """``(a, b)`` from an int or a pair of ints."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        a, b = value
    else:
        a = b = value
    if int(a) != a or int(b) != b:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(a), int(b)


def output_size(size, kernel, stride, padding, dilation=1):
    """Output length of a window of ``kernel`` taps ``dilation`` apart moved by ``stride`` over
    ``size + 2 padding``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv_geometry(x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """``(KH, KW, SH, SW, PH, PW, OH, OW)`` for an input of shape ``(N, C, H, W)``; raises a
    ``ValueError`` for a non-4-D shape, a non-positive kernel, stride or dilation, negative
    padding or a (dilated) kernel larger than the padded input."""
    if len(x_shape) != 4:
        raise ValueError(f"expected a 4-D input (N, C, H, W), got shape {tuple(x_shape)}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(kernel_size, "kernel_size"), pair(stride, "stride"),
                                              pair(padding, "padding"), pair(dilation, "dilation"))
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or dh < 1 or dw < 1 or ph < 0 or pw < 0:
        raise ValueError(f"kernel ({kh}, {kw}), stride ({sh}, {sw}) and dilation ({dh}, {dw}) must be "
                         f"positive and padding ({ph}, {pw}) non-negative")
    h, w = x_shape[2], x_shape[3]
    span_h, span_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if span_h > h + 2 * ph or span_w > w + 2 * pw:
        dilated = f" (dilated to {span_h}x{span_w})" if (dh, dw) != (1, 1) else ""
        raise ValueError(f"kernel {kh}x{kw}{dilated} is larger than the padded input {h + 2 * ph}x{w + 2 * pw} "
                         f"(input {h}x{w}, padding ({ph}, {pw}))")
    return kh, kw, sh, sw, ph, pw, output_size(h, kh, sh, ph, dh), output_size(w, kw, sw, pw, dw)


def windows(a, kernel_size, stride, out_size, dilation=(1, 1)):
    """Yield ``(i, j, view)`` for every kernel offset ``(i, j)`` in row-major order: the
    ``(..., OH, OW)`` strided view of the (padded) image ``a`` holding what offset ``(i, j)`` of
    every window sees (rows from ``i DH``, columns from ``j DW``). The one kernel-offset loop:
    im2col and col2im, pooling and the CuPy kernels all run over it."""
    (kh, kw), (sh, sw), (oh, ow), (dh, dw) = kernel_size, stride, out_size, dilation
    for i in range(kh):
        for j in range(kw):
            top, left = i * dh, j * dw
            yield i, j, a[..., top:top + sh * (oh - 1) + 1:sh, left:left + sw * (ow - 1) + 1:sw]


def im2col(x, kernel_size, stride, padding, xp, dilation=(1, 1)):
    """The patches of ``x`` ``(N, C, H, W)`` as ``cols`` ``(N, C, KH, KW, OH, OW)``."""
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, kernel_size, stride, padding, dilation)
    x_pad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = xp.empty(x.shape[:2] + (kh, kw, oh, ow), dtype=x.dtype)
    for i, j, view in windows(x_pad, (kh, kw), (sh, sw), (oh, ow), pair(dilation)):
        cols[:, :, i, j] = view                       # what kernel offset (i, j) sees
    return cols


def col2im(cols, x_shape, kernel_size, stride, padding, xp, dilation=(1, 1)):
    """``cols`` ``(N, C, KH, KW, OH, OW)`` folded back into an ``x_shape`` image, summing where
    patches overlap and dropping the padding: the adjoint of :func:`im2col`."""
    n, c, h, w = x_shape
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x_shape, kernel_size, stride, padding, dilation)
    x_pad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols.dtype)
    for i, j, view in windows(x_pad, (kh, kw), (sh, sw), (oh, ow), pair(dilation)):
        view += cols[:, :, i, j]
    return x_pad[:, :, ph:ph + h, pw:pw + w]


def conv2d_naive(x, weight, bias, stride, padding, xp):
    """The convolution written the obvious way, for teaching and testing: loops over output
    pixels, each one a dot product of a patch with every kernel (slow; use
    :class:`~manualbp.layers.Conv2d`).

    ``x`` ``(N, C, H, W)``, ``weight`` ``(C_out, C, KH, KW)``, ``bias`` ``(C_out,)`` or ``None``;
    returns ``(N, C_out, OH, OW)`` with
    ``y[n, o, oh, ow] = b[o] + sum_{c, i, j} w[o, c, i, j] x_pad[n, c, oh SH + i, ow SW + j]``.
    """
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, weight.shape[2:], stride, padding)
    x_pad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = xp.zeros((x.shape[0], weight.shape[0], oh, ow), dtype=x.dtype)
    for r in range(oh):
        for s in range(ow):
            patch = x_pad[:, :, r * sh:r * sh + kh, s * sw:s * sw + kw]           # (N, C, KH, KW)
            y[:, :, r, s] = xp.tensordot(patch, weight, axes=([1, 2, 3], [1, 2, 3]))
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y
