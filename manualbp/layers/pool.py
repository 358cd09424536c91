"""Pooling and flattening: layers without parameters between convolutions and dense layers.

Shapes (notation of :mod:`manualbp.layers.im2col`): pooling maps ``(N, C, H, W)`` to
``(N, C, OH, OW)`` with ``OH = (H + 2 PH - KH) // SH + 1`` (rows and columns that no window
reaches are dropped, as PyTorch's default ``ceil_mode=False``; max-pooling pads with ``-inf``,
average pooling with zeros that count, as PyTorch's defaults); :class:`GlobalAvgPool2d` maps to
``(N, C)``, :class:`AdaptiveAvgPool2d` to ``(N, C, 1, 1)`` and :class:`Flatten` to
``(N, C * H * W)``.
"""
from .base import Module
from .im2col import output_size, pair


def _check_4d(layer, x):
    if x.ndim != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")


class _Pool2d(Module):
    """Window geometry shared by max and average pooling; ``pad_value`` fills the border."""

    pad_value = 0.0

    def __init__(self, bk, kernel_size, stride=None, padding=0):
        super().__init__(bk)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")
        if min(*self.kernel_size, *self.stride) < 1:
            raise ValueError(f"{self.kind}: kernel {self.kernel_size} and stride "
                             f"{self.stride} must be positive")
        if any(not 0 <= p <= k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{self.kind}: padding {self.padding} must be between 0 and half the "
                             f"kernel {self.kernel_size}")

    def __repr__(self):
        return f"{self.kind}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"

    def _padded(self, x):
        """``x`` with ``padding`` rows and columns of ``pad_value`` on each side."""
        _check_4d(self.kind, x)
        (ph, pw) = self.padding
        if not ph and not pw:
            return x
        return self.xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=self.pad_value)

    def _cropped(self, dx):
        """The gradient of the unpadded input: ``dx`` without its border."""
        (ph, pw) = self.padding
        return dx[:, :, ph:dx.shape[2] - ph, pw:dx.shape[3] - pw]

    def _geometry(self, x):
        """Window geometry on the padded input ``x``."""
        _check_4d(self.kind, x)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        h, w = x.shape[2:]
        if kh > h or kw > w:
            raise ValueError(f"{self.kind}: kernel {kh}x{kw} is larger than the input {h}x{w} "
                             f"(with padding {self.padding}; input shape {tuple(x.shape)})")
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
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        c, h, w = input_shape
        return (c, output_size(h, kh, sh, ph), output_size(w, kw, sw, pw))


class MaxPool2d(_Pool2d):
    """Maximum over each ``KH x KW`` window moved by ``stride`` (default: the kernel size).

    The gradient of a window goes to its maximum; among equal maxima, to the first in row-major
    order (as PyTorch).
    """

    pad_value = -float("inf")

    def forward(self, x):
        x = self._padded(x)
        kh, kw, sh, sw, oh, ow = self._geometry(x)
        self.x_shape = x.shape
        windows = self.xp.stack([view for _, view in self._windows(x, oh, ow)])  # (KH*KW, N, C, OH, OW)
        self.argmax = windows.argmax(axis=0)               # the first maximum wins ties
        return windows.max(axis=0)

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        dx = self.xp.zeros(self.x_shape, dtype=delta.dtype)
        for k, view in self._windows(dx, *delta.shape[2:]):
            view += delta * (self.argmax == k)             # to the window's maximum only
        return self._cropped(dx)


class AvgPool2d(_Pool2d):
    """Mean over each ``KH x KW`` window moved by ``stride`` (default: the kernel size); the
    gradient of a window is shared equally among its elements."""

    def forward(self, x):
        x = self._padded(x)
        kh, kw, sh, sw, oh, ow = self._geometry(x)
        self.x_shape = x.shape
        return sum(view for _, view in self._windows(x, oh, ow)) / (kh * kw)

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        kh, kw = self.kernel_size
        dx = self.xp.zeros(self.x_shape, dtype=delta.dtype)
        for _, view in self._windows(dx, *delta.shape[2:]):
            view += delta / (kh * kw)                      # an equal share to every element
        return self._cropped(dx)


class GlobalAvgPool2d(Module):
    """Mean over the whole ``H x W`` map of each channel: ``(N, C, H, W)`` -> ``(N, C)``."""

    def forward(self, x):
        _check_4d("GlobalAvgPool2d", x)
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        n, c, h, w = self.x_shape
        return self.xp.ones(self.x_shape, dtype=delta.dtype) * (delta / (h * w))[:, :, None, None]


class AdaptiveAvgPool2d(GlobalAvgPool2d):
    """PyTorch's ``AdaptiveAvgPool2d(1)``: the mean over each channel's map, kept 4-D:
    ``(N, C, H, W)`` -> ``(N, C, 1, 1)``. Only the output size 1 (what ResNets use)."""

    def __init__(self, bk, output_size=1):
        super().__init__(bk)
        if pair(output_size, "output_size") != (1, 1):
            raise ValueError(f"AdaptiveAvgPool2d: only output_size 1 is supported, got {output_size!r}")

    def forward(self, x):
        return super().forward(x)[:, :, None, None]

    def backward(self, delta, input_grad=True):
        return super().backward(delta[:, :, 0, 0], input_grad)

    def output_shape(self, input_shape):
        return (input_shape[0], 1, 1)


class Flatten(Module):
    """``(N, d1, d2, ...)`` -> ``(N, d1 * d2 * ...)`` in C order (as ``torch.flatten(x, 1)``)."""

    def forward(self, x):
        if x.ndim < 2:
            raise ValueError(f"Flatten expects an input (N, ...) with at least 2 dimensions, "
                             f"got shape {tuple(x.shape)}")
        self.x_shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, delta, input_grad=True):
        if not input_grad:
            return None
        return delta.reshape(self.x_shape)

    def output_shape(self, input_shape):
        size = 1
        for s in input_shape:
            size *= int(s)
        return (size,)
