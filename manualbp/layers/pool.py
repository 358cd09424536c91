"""Pooling and flattening: layers without parameters between convolutions and dense layers.

Shapes (notation of :mod:`manualbp.layers.im2col`): pooling maps ``(N, C, H, W)`` to
``(N, C, OH, OW)`` with ``OH = (H - KH) // SH + 1`` (no padding; rows and columns that no window
reaches are dropped, as PyTorch's default ``ceil_mode=False``); :class:`GlobalAvgPool2d` maps to
``(N, C)`` and :class:`Flatten` to ``(N, C * H * W)``. Outputs and input gradients keep the
memory layout of the input (see :class:`~manualbp.layers.conv.Conv2d`).
"""
from .base import Module
from ..parallel import parallel_blocks
from .im2col import _empty_in_layout_of, _memory_order, output_size, pair


def _check_4d(layer, x):
    if x.ndim != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")


class _Pool2d(Module):
    """Window geometry shared by max and average pooling."""

    def __init__(self, bk, kernel_size, stride=None):
        super().__init__(bk)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        if min(*self.kernel_size, *self.stride) < 1:
            raise ValueError(f"{type(self).__name__}: kernel {self.kernel_size} and stride "
                             f"{self.stride} must be positive")

    def __repr__(self):
        return f"{type(self).__name__}(kernel_size={self.kernel_size}, stride={self.stride})"

    def _geometry(self, x):
        _check_4d(type(self).__name__, x)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        h, w = x.shape[2:]
        if kh > h or kw > w:
            raise ValueError(f"{type(self).__name__}: kernel {kh}x{kw} is larger than the input "
                             f"{h}x{w} (input shape {tuple(x.shape)})")
        return kh, kw, sh, sw, output_size(h, kh, sh, 0), output_size(w, kw, sw, 0)

    def _windows(self, a, oh, ow):
        """Yield ``(index, view)`` for each kernel offset ``(i, j)`` in row-major order: the
        ``(N, C, OH, OW)`` view of ``a`` holding element ``(i, j)`` of every window."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, a[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]

    def output_shape(self, input_shape):
        """``(C, OH, OW)`` for a per-sample input shape ``(C, H, W)``."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        c, h, w = input_shape
        return (c, output_size(h, kh, sh, 0), output_size(w, kw, sw, 0))


class MaxPool2d(_Pool2d):
    """Maximum over each ``KH x KW`` window moved by ``stride`` (default: the kernel size).

    The gradient of a window goes to its maximum; among equal maxima, to the first in row-major
    order (as PyTorch). The common 2x2, stride 2 case works on a ``(N, C, OH, 2, OW, 2)`` view of
    the input (no copy): three maxima, three comparisons, and one-hot masks of the winners for
    the backward pass, four multiplications. Other windows loop over the kernel offsets.
    """

    def forward(self, x):
        kh, kw, sh, sw, oh, ow = self._geometry(x)
        xp = self.xp
        self.x_shape, self.x_like = tuple(x.shape), x
        self.fast = (kh, kw, sh, sw) == (2, 2, 2, 2)
        if self.fast:
            return self._forward_2x2(x, oh, ow)
        out, self.argmax = None, None
        for k, view in self._windows(x, oh, ow):
            if out is None:
                out = view.copy(order="K")
                self.argmax = xp.zeros(out.shape, dtype=xp.int32)
            else:
                larger = view > out                        # strictly larger: the first max wins
                self.argmax[larger] = k
                xp.maximum(out, view, out=out)
        return out

    def _forward_2x2(self, x, oh, ow):
        """Windows ``a b / c d`` as four strided views; ``max(max(a, b), max(c, d))``, and the
        one-hot masks of the first maximum for the backward pass. The masks and temporaries
        live in buffers reused from step to step; the work is split over threads by channel."""
        xp = self.xp
        n, c = x.shape[:2]
        shape = (n, c, oh, ow)
        key = (shape, tuple(_memory_order(x)), x.dtype)
        if getattr(self, "_key", None) != key:
            self._key = key
            self._bool = [_empty_in_layout_of(shape, x, xp, bool) for _ in range(7)]
            self._low = _empty_in_layout_of(shape, x, xp)
        m00, m01, m10, m11, right_top, right_bottom, lower = self._bool
        self.masks = (m00, m01, m10, m11)
        out = _empty_in_layout_of(shape, x, xp)
        x6 = x[:, :, :2 * oh, :2 * ow].reshape(n, c, oh, 2, ow, 2)

        def block(cs, ns):
            a, b = x6[ns, cs, :, 0, :, 0], x6[ns, cs, :, 0, :, 1]
            c_, d = x6[ns, cs, :, 1, :, 0], x6[ns, cs, :, 1, :, 1]
            top, bottom, lo = out[ns, cs], self._low[ns, cs], lower[ns, cs]
            rt, rb = right_top[ns, cs], right_bottom[ns, cs]
            xp.greater(b, a, out=rt)                       # ties keep the left (first) element
            xp.greater(d, c_, out=rb)
            xp.maximum(a, b, out=top)
            xp.maximum(c_, d, out=bottom)
            xp.greater(bottom, top, out=lo)                # ties keep the top row
            xp.logical_not(xp.logical_or(lo, rt, out=m00[ns, cs]), out=m00[ns, cs])
            xp.greater(rt, lo, out=m01[ns, cs])            # right_top and not lower
            xp.greater(lo, rb, out=m10[ns, cs])            # lower and not right_bottom
            xp.logical_and(lo, rb, out=m11[ns, cs])
            xp.maximum(top, bottom, out=top)

        parallel_blocks(xp, c, n, x.size, block)
        return out

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        xp = self.xp
        n, c, h, w = self.x_shape
        oh, ow = delta.shape[2:]
        covered = self.fast and h == 2 * oh and w == 2 * ow
        dx = xp.empty_like(self.x_like) if covered else xp.zeros_like(self.x_like)
        if self.fast:
            d6 = dx[:, :, :2 * oh, :2 * ow].reshape(n, c, oh, 2, ow, 2)

            def block(cs, ns):
                for (i, j), mask in zip(((0, 0), (0, 1), (1, 0), (1, 1)), self.masks):
                    xp.multiply(delta[ns, cs], mask[ns, cs], out=d6[ns, cs, :, i, :, j])

            parallel_blocks(xp, c, n, dx.size, block)
            return dx
        for k, view in self._windows(dx, oh, ow):
            view += delta * (self.argmax == k)
        return dx


class AvgPool2d(_Pool2d):
    """Mean over each ``KH x KW`` window moved by ``stride`` (default: the kernel size); the
    gradient of a window is shared equally among its elements."""

    def forward(self, x):
        kh, kw, sh, sw, oh, ow = self._geometry(x)
        self.x_shape, self.x_like = tuple(x.shape), x
        out = None
        for _, view in self._windows(x, oh, ow):
            out = view.copy(order="K") if out is None else self.xp.add(out, view, out=out)
        out *= 1.0 / (kh * kw)
        return out

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        kh, kw = self.kernel_size
        oh, ow = delta.shape[2:]
        dx = self.xp.zeros_like(self.x_like)
        share = delta * (1.0 / (kh * kw))
        for _, view in self._windows(dx, oh, ow):
            view += share
        return dx


class GlobalAvgPool2d(Module):
    """Mean over the whole ``H x W`` map of each channel: ``(N, C, H, W)`` -> ``(N, C)``."""

    def forward(self, x):
        _check_4d("GlobalAvgPool2d", x)
        self.x_like = x
        return x.mean(axis=(2, 3))

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        h, w = self.x_like.shape[2:]
        dx = self.xp.empty_like(self.x_like)                  # in the input's memory layout
        dx[...] = (delta * (1.0 / (h * w)))[:, :, None, None]
        return dx


class Flatten(Module):
    """``(N, d1, d2, ...)`` -> ``(N, d1 * d2 * ...)`` in C order (as ``torch.flatten(x, 1)``)."""

    def forward(self, x):
        if x.ndim < 2:
            raise ValueError(f"Flatten expects an input (N, ...) with at least 2 dimensions, "
                             f"got shape {tuple(x.shape)}")
        self.x_shape, self.x_like = tuple(x.shape), x
        return x.reshape(x.shape[0], -1)

    def backward(self, delta, input_grad=True):
        """``delta`` reshaped to the input's shape -- and copied into the input's memory layout
        when that is not C order, so the layers below work in their own layout throughout."""
        if not input_grad:
            return None
        if self.x_like.flags.c_contiguous:
            return delta.reshape(self.x_shape)
        dx = self.xp.empty_like(self.x_like)
        dx[...] = delta.reshape(self.x_shape)
        return dx

    def output_shape(self, input_shape):
        size = 1
        for s in input_shape:
            size *= int(s)
        return (size,)


class Unflatten(Module):
    """``(N, d)`` -> ``(N, *shape)`` with ``d = prod(shape)``, in C order: e.g. flat 784-pixel
    MNIST rows to ``(N, 1, 28, 28)`` images in front of a CNN. The inverse of :class:`Flatten`."""

    def __init__(self, bk, shape):
        super().__init__(bk)
        self.shape = tuple(int(s) for s in shape)
        self.size = 1
        for s in self.shape:
            self.size *= s

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.size:
            raise ValueError(f"Unflatten expects an input (N, {self.size}) to reshape to "
                             f"(N, {', '.join(map(str, self.shape))}), got shape {tuple(x.shape)}")
        self.x_shape = tuple(x.shape)
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        return delta.reshape(self.x_shape)

    def output_shape(self, input_shape):
        return self.shape
