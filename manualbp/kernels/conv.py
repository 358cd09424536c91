"""The fast convolution: :class:`~manualbp.layers.conv.Conv2d` as one GEMM per product, in the
batch-innermost layout, with reused buffers."""
from ..layers.conv import Conv2d
from .im2col import col2im, im2col


class Conv2dKernel(Conv2d):
    """What :class:`~manualbp.layers.conv.Conv2d` computes, faster.

    Forward: ``cols = im2col(x)`` ``(K, P)`` (:mod:`manualbp.kernels.im2col`); ``v = w (C_out, K)
    @ cols`` ``(C_out, P)``, with the bias folded in as one more column of ``w`` times a row of
    ones in ``cols`` (``x_0 = 1`` of Eq. 1). Backward (Eq. 2): ``dL/dw = delta @ cols^T`` (its
    column for the row of ones is ``dL/db``) and ``dL/dx = col2im(w^T @ delta)``.

    Memory layout: the GEMM's columns are ordered ``(OH, OW, N)``, and the output is an
    ``(N, C_out, OH, OW)`` *view* of the GEMM result, stored ``(C_out, OH, OW, N)``: the batch
    innermost. Every strided view a 2x2 pooling window or a kernel offset takes is then a run of
    ``N`` contiguous numbers; element-wise layers, pooling and batch norm keep that layout, the
    next convolution reads it directly, and the ``delta`` coming back is already in the layout
    the GEMMs want. The column buffers are reused while the input shape stays the same, and the
    gradients are written in place.
    """

    #: Weight size (C_out * K) from which ``dL/dw`` is computed in its own orientation.
    DIRECT_GRAD_SIZE = 1 << 19

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cols = None          # (K [+ 1], P) column buffer, bias row of ones at the end
        self._dcols = None         # (K, P) buffer for w^T @ delta
        self._grad_w = None        # buffer for [dL/dw | dL/db] or its transpose

    def _column_buffer(self, k, p, bias):
        rows = k + 1 if bias else k
        if self._cols is None or self._cols.shape != (rows, p) or self._cols.dtype != self.bk.dtype:
            self._cols = self.xp.empty((rows, p), dtype=self.bk.dtype)
            if bias:
                self._cols[k] = 1                                   # x_0 = 1: the bias input
        return self._cols

    @staticmethod
    def _columns(a, rows, n, oh, ow):
        """The ``(rows, P)`` matrix ``a`` as a ``(rows, N, OH, OW)`` view (no copy)."""
        return a.reshape(rows, oh, ow, n).transpose(0, 3, 1, 2)

    def forward(self, x):
        self.check(x)
        xp = self.xp
        n, c, h, w = x.shape
        kh, kw = self.kernel_size
        c_out, oh, ow = self.output_shape((c, h, w))
        k, p = c * kh * kw, n * oh * ow
        bias = "bias" in self.params
        cols = self._column_buffer(k, p, bias)
        patches = self._columns(cols[:k], k, n, oh, ow).reshape(c, kh, kw, n, oh, ow)
        im2col(x, self.kernel_size, self.stride, self.padding, xp, out=patches)
        self.x_shape = tuple(x.shape)
        weight = self.params["weight"].reshape(c_out, k)
        if bias:
            weight = xp.concatenate([weight, self.params["bias"].reshape(c_out, 1)], axis=1)
        v = xp.matmul(weight, cols)                                # (C_out, N*OH*OW), Eq. (1)
        v = self._columns(v, c_out, n, oh, ow).transpose(1, 0, 2, 3)   # (N, C_out, OH, OW) view
        if "noise" in self.children:
            v = self.children["noise"].forward(v)                  # + z, Eq. (1)
        return v

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
        if "noise" in self.children:
            delta = self.children["noise"].backward(delta)         # fills dL/dsigma, Eq. (3)
        xp = self.xp
        c_out = self.out_channels
        n, c = self.x_shape[:2]
        kh, kw = self.kernel_size
        k = c * kh * kw
        oh, ow = delta.shape[2:]
        d2 = delta.transpose(1, 2, 3, 0).reshape(c_out, -1)        # (C_out, P): free in this layout
        if self.param_grads:
            self._weight_gradient(d2, k)
        if not input_grad:
            return None
        if self._dcols is None or self._dcols.shape != (k, d2.shape[1]):
            self._dcols = xp.empty((k, d2.shape[1]), dtype=self.bk.dtype)
        dcols = xp.matmul(self.params["weight"].reshape(c_out, k).T, d2, out=self._dcols)
        dcols = self._columns(dcols, k, n, oh, ow).reshape(c, kh, kw, n, oh, ow)
        return col2im(dcols, self.x_shape, self.kernel_size, self.stride, self.padding, xp)
