"""Pooling and flattening: layers without parameters between convolutions and dense layers.

Shapes (notation of :mod:`manualbp.ops.im2col`): pooling maps ``(N, C, H, W)`` to
``(N, C, OH, OW)`` with ``OH = (H + 2 PH - KH) // SH + 1`` (rows and columns that no window
reaches are dropped, as PyTorch's default ``ceil_mode=False``; max-pooling pads with ``-inf``,
average pooling with zeros that count, as PyTorch's defaults); :class:`GlobalAvgPool2d` maps to
``(N, C)``, :class:`AdaptiveAvgPool2d` to ``(N, C, 1, 1)`` and :class:`Flatten` to
``(N, C * H * W)``.
"""
from .. import ops
from ..ops.im2col import output_size, pair
from .base import Module


def _check_4d(layer, x):
    if x.ndim != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")


class _Pool2d(Module):
    """Window geometry shared by max and average pooling (the ops pad the border)."""

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

    def check(self, x):
        _check_4d(self.kind, x)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
        if kh > h or kw > w:
            raise ValueError(f"{self.kind}: kernel {kh}x{kw} is larger than the input {h}x{w} "
                             f"(with padding {self.padding}; input shape {tuple(x.shape)})")

    def settings(self, training):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

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

    op = ops.max_pool2d


class AvgPool2d(_Pool2d):
    """Mean over each ``KH x KW`` window moved by ``stride`` (default: the kernel size); the
    gradient of a window is shared equally among its elements."""

    op = ops.avg_pool2d


class GlobalAvgPool2d(Module):
    """Mean over the whole ``H x W`` map of each channel: ``(N, C, H, W)`` -> ``(N, C)``."""

    op = ops.global_avg_pool2d

    def check(self, x):
        _check_4d(self.kind, x)


class AdaptiveAvgPool2d(GlobalAvgPool2d):
    """PyTorch's ``AdaptiveAvgPool2d(1)``: the mean over each channel's map, kept 4-D:
    ``(N, C, H, W)`` -> ``(N, C, 1, 1)``. Only the output size 1 (what ResNets use)."""

    def __init__(self, bk, output_size=1):
        super().__init__(bk)
        if pair(output_size, "output_size") != (1, 1):
            raise ValueError(f"AdaptiveAvgPool2d: only output_size 1 is supported, got {output_size!r}")

    def settings(self, training):
        return {"keepdims": True}

    def output_shape(self, input_shape):
        return (input_shape[0], 1, 1)


class Flatten(Module):
    """``(N, d1, d2, ...)`` -> ``(N, d1 * d2 * ...)`` in C order (as ``torch.flatten(x, 1)``)."""

    op = ops.flatten

    def check(self, x):
        if x.ndim < 2:
            raise ValueError(f"Flatten expects an input (N, ...) with at least 2 dimensions, "
                             f"got shape {tuple(x.shape)}")

    def output_shape(self, input_shape):
        size = 1
        for s in input_shape:
            size *= int(s)
        return (size,)
