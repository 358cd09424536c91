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
    Eq. 1). Backward (Eq. 2): ``dL/dw = delta @ cols^T`` (its last column is ``dL/db``) and
    ``dL/dx = col2im(w^T @ delta)``.

    The output is returned as an ``(N, C_out, OH, OW)`` view of the ``(C_out, N, OH, OW)`` GEMM
    result, so no transpose is ever copied: element-wise layers and pooling keep that layout,
    the next convolution reads it directly, and the ``delta`` coming back is already in the
    layout the weight-gradient GEMM wants. The column buffer is reused while the input shape
    stays the same.
    """

    def __init__(self, bk, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 noise=None):
        super().__init__(bk)
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
        self._grad_w = None        # (C_out, K + 1) buffer for delta @ cols^T when there is a bias

    def __repr__(self):
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={'bias' in self.params})")

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
        im2col(x, (kh, kw), (sh, sw), (ph, pw), out=cols[:k].reshape(c, kh, kw, n, oh, ow), xp=xp)
        self.x_shape = tuple(x.shape)
        w = self.params["weight"].reshape(c_out, k)
        if bias:
            w = xp.concatenate([w, self.params["bias"].reshape(c_out, 1)], axis=1)
        v = xp.matmul(w, cols)                                  # (C_out, N*OH*OW), Eq. (1)
        v = v.reshape(c_out, n, oh, ow).transpose(1, 0, 2, 3)   # (N, C_out, OH, OW) view
        if "noise" in self.children:
            v = self.children["noise"].forward(v)               # + z, Eq. (1)
        return v

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
        d2 = delta.transpose(1, 0, 2, 3).reshape(c_out, n * oh * ow)   # free in the usual layout
        cols = self._cols
        grad = self.grads["weight"]
        grad_w = grad.reshape(c_out, k) if grad.flags.c_contiguous else xp.empty((c_out, k), grad.dtype)
        if "bias" in self.params:
            if self._grad_w is None or self._grad_w.shape != (c_out, k + 1):
                self._grad_w = xp.empty((c_out, k + 1), dtype=self.bk.dtype)
            xp.matmul(d2, cols.T, out=self._grad_w)            # [dL/dw | dL/db] in one GEMM
            grad_w[...] = self._grad_w[:, :k]
            self.grads["bias"][...] = self._grad_w[:, k]
        else:
            xp.matmul(d2, cols.T, out=grad_w)                  # dL/dw = delta x^T
        if not grad.flags.c_contiguous:
            grad[...] = grad_w.reshape(grad.shape)
        if not input_grad:
            return None
        if self._dcols is None or self._dcols.shape != (k, d2.shape[1]):
            self._dcols = xp.empty((k, d2.shape[1]), dtype=self.bk.dtype)
        dcols = xp.matmul(self.params["weight"].reshape(c_out, k).T, d2, out=self._dcols)
        return col2im(dcols.reshape(c, kh, kw, n, oh, ow), self.x_shape, self.kernel_size,
                      self.stride, self.padding, xp=xp)
