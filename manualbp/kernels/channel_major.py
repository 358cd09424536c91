"""The CuPy kernels: feature maps stored channel-major, so that every product of a convolution
is one GEMM on matrices cuBLAS reads as they are, and every other result in its input's layout.

CuPy's element-wise results are C-ordered, so the NumPy kernels' batch-innermost layout would
be lost after the first activation, and each convolution would copy its operands into the order
its matrix products need. Here the convolution keeps its GEMM's own output, ``(C_out, N, OH, OW)``
in memory, shown as the usual ``(N, C_out, OH, OW)``; the layers between convolutions write
their results in the memory layout of their input (``out=`` into ``empty_like``). Then, with
``cols`` the columns ``(C KH KW, N OH OW)`` and ``delta`` read as ``(C_out, N OH OW)``:

    v = W cols               (Eq. 1)
    dL/dW = delta cols^T      dL/dcols = W^T delta      (Eq. 2)

are GEMMs on views: no relayout copy in a ResNet step (``tests/test_cupy.py`` counts them on
the CuPy stand-in). The kernels use only array operations, so they run on NumPy too.
"""
from ..layers import BatchNorm2d, Conv2d, MaxPool2d, ReLU
from ..layers.im2col import conv_geometry
from .noise import GaussianNoiseKernel
from .norm import gradient_arrays


def columns(xp, a, kernel, stride, padding, out_size):
    """The columns ``(C KH KW, N OH OW)`` of ``a`` ``(C, N, H, W)`` zero-padded by ``(PH, PW)``
    into ``p``, copied in one pass from a view of all windows:
    ``cols[c, i, j, n, y, x] = p[c, n, y SH + i, x SW + j]``. (``as_strided``, not
    ``sliding_window_view``: CuPy's checks its window shape on the device and reads the answer
    back, a host sync.)"""
    (kh, kw), (sh, sw), (ph, pw), (oh, ow) = kernel, stride, padding, out_size
    c, n, h, w = a.shape
    if ph or pw:
        padded = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=a.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = a
        a = padded
    s_c, s_n, s_h, s_w = a.strides
    windows = xp.lib.stride_tricks.as_strided(a, (c, kh, kw, n, oh, ow), (s_c, s_h, s_w, s_n, s_h * sh, s_w * sw))
    cols = xp.empty((c, kh, kw, n, oh, ow), dtype=a.dtype)
    cols[...] = windows
    return cols.reshape(c * kh * kw, n * oh * ow)


class Conv2dChannelMajor(Conv2d):
    """What :class:`~manualbp.layers.conv.Conv2d` computes; the output and ``dL/dx`` are
    stored ``(C, N, H, W)``.

    With stride 1, padding ``P < K`` and a kernel of more than 3 elements, ``dL/dx`` is the
    convolution of ``delta``, padded by ``K - 1 - P``, with the kernel flipped and its channel
    axes swapped (Eq. 2 regrouped): one GEMM on columns, 5 launches (3 when ``P = K - 1``).
    Otherwise ``dL/dcols = W^T delta`` is added back one kernel offset after the other,
    2 + KH KW launches. The columns of ``delta`` are written and read once, ``dL/dcols`` is
    written, read and added twice over, so the first moves no more memory while
    ``C_out <= 2 C_in`` (not so for a first convolution, 3 -> 64 channels, in an attack).
    """

    def forward(self, x):
        self.check(x)
        xp = self.xp
        n, c, h, w = self.x_shape = x.shape
        kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, self.kernel_size, self.stride, self.padding)
        self.cols = columns(xp, x.transpose(1, 0, 2, 3), (kh, kw), (sh, sw), (ph, pw), (oh, ow))
        v = xp.matmul(self.params["weight"].reshape(self.out_channels, -1), self.cols)   # Eq. (1)
        v = v.reshape(self.out_channels, n, oh, ow)
        if "bias" in self.params:
            v += self.params["bias"][:, None, None, None]
        v = v.transpose(1, 0, 2, 3)
        if "noise" in self.children:
            v = self.children["noise"].forward(v)
        return v

    def backward(self, delta, input_grad=True):
        if "noise" in self.children:
            delta = self.children["noise"].backward(delta)
        xp = self.xp
        n, c, h, w = self.x_shape
        kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(self.x_shape, self.kernel_size, self.stride, self.padding)
        d = delta.transpose(1, 0, 2, 3)                                    # (C_out, N, OH, OW)
        weight = self.params["weight"]
        if self.param_grads:                                                # written in place
            flat = d.reshape(self.out_channels, -1)                         # a view: channel-major
            xp.matmul(flat, self.cols.T, out=self.grads["weight"].reshape(self.out_channels, -1))
            if "bias" in self.params:
                flat.sum(axis=1, out=self.grads["bias"])
        if not input_grad:
            return None
        if (sh, sw) == (1, 1) and kh * kw > 3 and ph < kh and pw < kw and self.out_channels <= 2 * c:
            flipped = xp.empty((c, self.out_channels, kh, kw), dtype=weight.dtype)
            flipped[...] = weight.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
            delta_cols = columns(xp, d, (kh, kw), (1, 1), (kh - 1 - ph, kw - 1 - pw), (h, w))
            dx = xp.matmul(flipped.reshape(c, -1), delta_cols)             # Eq. (2)
            return dx.reshape(c, n, h, w).transpose(1, 0, 2, 3)
        dcols = xp.matmul(weight.reshape(self.out_channels, -1).T, d.reshape(self.out_channels, -1))   # Eq. (2)
        dcols = dcols.reshape(c, kh, kw, n, oh, ow)
        padded = xp.zeros((c, n, h + 2 * ph, w + 2 * pw), dtype=delta.dtype)
        for i in range(kh):
            for j in range(kw):
                view = padded[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw]     # added to in place
                view += dcols[:, i, j]
        return padded[:, :, ph:ph + h, pw:pw + w].transpose(1, 0, 2, 3)


class GaussianNoiseInLayout(GaussianNoiseKernel):
    """What :class:`~manualbp.layers.noise.GaussianNoise` computes; the sums over the batch of
    Eq. (3) are a product in ``delta``'s layout and a reduction written in place. (CuPy's
    ``einsum`` would copy both operands into the order of a batched matrix product.)"""

    def sum_over_batch(self, a, b, out):
        if b is not None:
            a = self.xp.multiply(a, b, out=self.xp.empty_like(a))
        a.sum(axis=0, out=out)


class ReLUInLayout(ReLU):
    """What :class:`~manualbp.layers.activations.ReLU` computes, in its input's layout."""

    def forward(self, v):
        xp = self.xp
        self.active = xp.greater(v, 0, out=xp.empty_like(v, dtype=bool))
        return xp.maximum(v, 0, out=xp.empty_like(v))

    def backward(self, delta, input_grad=True):
        return self.xp.multiply(delta, self.active, out=self.xp.empty_like(delta))


class BatchNorm2dInLayout(BatchNorm2d):
    """What :class:`~manualbp.layers.norm.BatchNorm2d` computes, in its input's layout."""

    def forward(self, x):
        self.check(x)
        xp = self.xp
        mean, var = self.statistics(x)
        self.inv_std = 1 / xp.sqrt(var + self.floor)
        self.xhat = xp.subtract(x, mean, out=xp.empty_like(x))
        self.xhat *= self.inv_std
        y = xp.multiply(self._per_feature("weight", self.params), self.xhat, out=xp.empty_like(x))
        y += self._per_feature("bias", self.params)
        return y

    def update_running(self, mean, var, count):
        """The reference's update, each buffer in place: ``r *= 1 - momentum``, then
        ``r += momentum * statistic`` (3 launches, not 4)."""
        m = self.momentum
        for name, statistic in (("running_mean", m * mean), ("running_var", m * count / (count - 1) * var)):
            running = self.buffers[name]
            running *= 1 - m
            running += statistic.reshape(-1)

    def backward(self, delta, input_grad=True):
        xp = self.xp
        if self.param_grads or self.training:
            grad_w, grad_b = gradient_arrays(self)
            product = xp.multiply(delta, self.xhat, out=xp.empty_like(delta))
            product.sum(axis=self.axes, out=grad_w)                    # sum delta * xhat
            delta.sum(axis=self.axes, out=grad_b)                      # sum delta
        if not input_grad:
            return None
        scale = self._per_feature("weight", self.params) * self.inv_std
        dx = xp.multiply(scale, delta, out=xp.empty_like(delta))
        if self.training:                      # scale * (delta - (dL/dbias + xhat * dL/dweight) / n)
            correction = xp.multiply(self.xhat, grad_w.reshape(self.shape), out=product)
            correction += grad_b.reshape(self.shape)
            correction *= scale / self.count
            dx -= correction
        return dx


class MaxPool2dChannelMajor(MaxPool2d):
    """What :class:`~manualbp.layers.pool.MaxPool2d` computes, with ``dL/dx`` stored
    ``(C, N, H, W)`` for the convolution below. Windows that tile the input (stride = kernel)
    get their gradients in one product, as ``(C, N, OH, KH, OW, KW)`` blocks; overlapping ones
    one kernel offset after the other."""

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        xp, (n, c, h, w), (kh, kw) = self.xp, self.x_shape, self.kernel_size
        oh, ow = delta.shape[2:]
        if self.stride == self.kernel_size:
            blocks = xp.empty((c, n, oh, kh, ow, kw), dtype=delta.dtype)
            offsets = xp.arange(kh * kw).reshape(kh, 1, kw)                    # i * KW + j at (i, j)
            first_max = self.argmax.transpose(1, 0, 2, 3)[:, :, :, None, :, None] == offsets
            xp.multiply(first_max, delta.transpose(1, 0, 2, 3)[:, :, :, None, :, None], out=blocks)
            dx = tiled = blocks.reshape(c, n, oh * kh, ow * kw)
            if tiled.shape[2:] != (h, w):                  # rows or columns that no window covers
                dx = xp.zeros((c, n, h, w), dtype=delta.dtype)
                dx[:, :, :oh * kh, :ow * kw] = tiled
            return self._cropped(dx.transpose(1, 0, 2, 3))
        dx = xp.zeros((c, n, h, w), dtype=delta.dtype).transpose(1, 0, 2, 3)
        for k, view in self._windows(dx, oh, ow):
            view += delta * (self.argmax == k)             # to the window's maximum only
        return self._cropped(dx)
