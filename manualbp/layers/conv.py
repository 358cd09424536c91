"""2-D convolution by im2col and one matrix product: Eq. (1) for every neuron of a feature map."""
import math

from .base import Module
from .im2col import col2im, conv_geometry, im2col, pair


class Conv2d(Module):
    """``v = w * x + b (+ z)``: a cross-correlation, as PyTorch's ``Conv2d``, plus optional noise.

    Every element ``v[n, o, oh, ow]`` of the output is one neuron of Eq. (1): the dot product of
    kernel ``o`` with the patch of ``x`` under it, plus the bias, plus the noise ``z``.

    Shapes (notation of :mod:`manualbp.layers.im2col`): ``x`` ``(N, C_in, H, W)`` ->
    ``v`` ``(N, C_out, OH, OW)``; ``weight`` ``(C_out, C_in, KH, KW)`` (PyTorch's layout);
    ``bias`` ``(C_out,)``. ``kernel_size``, ``stride`` and ``padding`` are ints or pairs.

    ``noise`` (optional, a :class:`GaussianNoise` of shape ``(C_out, OH, OW)``) adds ``z`` to
    ``v`` -- one ``sigma`` (and, with ``learn_mean``, one ``mu``) per element of the feature map,
    the paper's Fig. 1 (right). It becomes the child ``"noise"`` (``"conv1.noise.sigma"``).
    Weights and bias start as PyTorch's do: uniform on ``+-1/sqrt(C_in KH KW)``.

    Notes
    -----
    Forward: ``cols = im2col(x)`` ``(K, P)``; ``v = w (C_out, K) @ cols`` ``(C_out, P)``, with the
    bias folded in as one more column of ``w`` times a row of ones in ``cols`` (``x_0 = 1`` of
    Eq. 1). Backward (Eq. 2): ``dL/dw = delta @ cols^T`` (its column for the row of ones is
    ``dL/db``) and ``dL/dx = col2im(w^T @ delta)``.

    Memory layout: the output is an ``(N, C_out, OH, OW)`` *view* of the GEMM result, never a
    transposed copy. Element-wise layers and pooling keep that layout, the next convolution
    reads it directly, and the ``delta`` coming back is already in the layout the GEMMs want.
    ``column_order`` picks the order of the GEMM's columns, i.e. the memory order of the output:

    * ``"hwn"`` (default): ``(C_out, OH, OW, N)``, the batch innermost. Every strided view a 2x2
      pooling window or a kernel offset takes is then a run of ``N`` contiguous numbers (long
      inner loops); a noise child draws its ``eps`` in the same layout, and ``sum_n delta * eps``
      (Eq. 3) sums contiguous runs.
    * ``"nhw"``: ``(C_out, N, OH, OW)``, contiguous ``OH x OW`` planes per sample and channel.

    The column buffer is reused while the input shape stays the same.
    """

    COLUMN_ORDERS = ("nhw", "hwn")
    #: Weight size (C_out * K) from which ``dL/dw`` is computed in its own orientation.
    DIRECT_GRAD_SIZE = 1 << 19

    def __init__(self, bk, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 noise=None, column_order="hwn"):
        super().__init__(bk)
        if column_order not in self.COLUMN_ORDERS:
            raise ValueError(f"unknown column_order {column_order!r}: expected one of "
                             f"{', '.join(self.COLUMN_ORDERS)}")
        self.column_order = column_order
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        kh, kw = self.kernel_size
        if min(kh, kw, *self.stride) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: kernel {self.kernel_size} and stride {self.stride} must be "
                             f"positive, padding {self.padding} non-negative")
        fan_in = self.in_channels * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        self.add_param("weight", bk.uniform(-bound, bound, (out_channels, in_channels, kh, kw)))
        if bias:
            self.add_param("bias", bk.uniform(-bound, bound, (out_channels,)))
        if noise is not None:
            self.children["noise"] = noise
        self._cols = None          # (K [+ 1], P) column buffer, bias row of ones at the end
        self._dcols = None         # (K, P) buffer for w^T @ delta
        self._grad_w = None        # buffer for [dL/dw | dL/db] or its transpose

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'bias' in self.params}, "
                f"column_order={self.column_order!r})")

    def output_shape(self, input_shape):
        """``(C_out, OH, OW)`` for a per-sample input shape ``(C_in, H, W)``."""
        geometry = conv_geometry((1, *input_shape), self.kernel_size, self.stride, self.padding)
        return (self.out_channels, geometry[6], geometry[7])

    def _check(self, x):
        if x.ndim != 4:
            raise ValueError(f"Conv2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        return conv_geometry(x.shape, self.kernel_size, self.stride, self.padding)

    def _column_buffer(self, k, p, bias):
        rows = k + 1 if bias else k
        if self._cols is None or self._cols.shape != (rows, p) or self._cols.dtype != self.bk.dtype:
            self._cols = self.xp.empty((rows, p), dtype=self.bk.dtype)
            if bias:
                self._cols[k] = 1                                   # x_0 = 1: the bias input
        return self._cols

    def forward(self, x):
        kh, kw, sh, sw, ph, pw, oh, ow = self._check(x)
        xp = self.xp
        n, c = x.shape[:2]
        k, p, c_out = c * kh * kw, n * oh * ow, self.out_channels
        bias = "bias" in self.params
        cols = self._column_buffer(k, p, bias)
        patches = self._columns(cols[:k], k, n, oh, ow).reshape(c, kh, kw, n, oh, ow)
        im2col(x, (kh, kw), (sh, sw), (ph, pw), out=patches, xp=xp)   # cols[:K] = im2col(x)
        self.x_shape = tuple(x.shape)
        w = self.params["weight"].reshape(c_out, k)
        if bias:
            w = xp.concatenate([w, self.params["bias"].reshape(c_out, 1)], axis=1)
        v = xp.matmul(w, cols)                                  # (C_out, N*OH*OW), Eq. (1)
        v = self._as_image(v, c_out, n, oh, ow)                 # (N, C_out, OH, OW) view
        if "noise" in self.children:
            v = self.children["noise"].forward(v)               # + z, Eq. (1)
        return v

    def _columns(self, a, rows, n, oh, ow):
        """The ``(rows, P)`` matrix ``a`` as a ``(rows, N, OH, OW)`` view (no copy)."""
        if self.column_order == "nhw":
            return a.reshape(rows, n, oh, ow)
        return a.reshape(rows, oh, ow, n).transpose(0, 3, 1, 2)

    def _as_image(self, a, rows, n, oh, ow):
        """The ``(rows, P)`` matrix ``a`` as an ``(N, rows, OH, OW)`` view (no copy)."""
        return self._columns(a, rows, n, oh, ow).transpose(1, 0, 2, 3)

    def _as_matrix(self, a):
        """An ``(N, C, OH, OW)`` array as the ``(C, P)`` matrix (a copy only if the layout differs)."""
        axes = (1, 0, 2, 3) if self.column_order == "nhw" else (1, 2, 3, 0)
        return a.transpose(axes).reshape(a.shape[1], -1)

    def _grad_buffer(self, shape):
        if self._grad_w is None or self._grad_w.shape != shape:
            self._grad_w = self.xp.empty(shape, dtype=self.bk.dtype)
        return self._grad_w

    def _weight_gradient(self, d2, k):
        """``[dL/dw | dL/db] = delta cols^T``, ``(C_out, K [+ 1])``, in one GEMM: the row of ones
        in ``cols`` gives ``dL/db``. For a small weight BLAS is faster computing the transpose,
        ``cols delta^T``; a large one is written directly, since its transposed copy would cost
        as much as the GEMM."""
        xp, c_out, cols = self.xp, self.out_channels, self._cols      # cols: (K [+ 1], P)
        grad_w = self.grads["weight"].reshape(c_out, k)
        if c_out * k >= self.DIRECT_GRAD_SIZE:
            out = self._grad_buffer((c_out, cols.shape[0])) if cols.shape[0] > k else grad_w
            g = xp.matmul(d2, cols.T, out=out)
        else:
            g = xp.matmul(cols, d2.T, out=self._grad_buffer((cols.shape[0], c_out))).T
        if g is not grad_w:
            grad_w[...] = g[:, :k]
        if "bias" in self.params:
            self.grads["bias"][...] = g[:, k]

    def backward(self, delta, input_grad=True):
        """``delta``: ``dL/dv`` ``(N, C_out, OH, OW)``; returns ``dL/dx`` (Eq. 2) or ``None``."""
        if "noise" in self.children:
            delta = self.children["noise"].backward(delta)      # fills dL/dsigma, Eq. (3)
        xp = self.xp
        c_out = self.out_channels
        n, c = self.x_shape[:2]
        kh, kw = self.kernel_size
        k = c * kh * kw
        oh, ow = delta.shape[2:]
        d2 = self._as_matrix(delta)                            # free in the usual layout
        if self.param_grads:
            self._weight_gradient(d2, k)
        if not input_grad:
            return None
        if self._dcols is None or self._dcols.shape != (k, d2.shape[1]):
            self._dcols = xp.empty((k, d2.shape[1]), dtype=self.bk.dtype)
        dcols = xp.matmul(self.params["weight"].reshape(c_out, k).T, d2, out=self._dcols)
        dcols = self._columns(dcols, k, n, oh, ow).reshape(c, kh, kw, n, oh, ow)
        return col2im(dcols, self.x_shape, self.kernel_size, self.stride, self.padding, xp=xp)
