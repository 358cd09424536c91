"""Pooling and flattening: layers without parameters between convolutions and dense layers.

Shapes (notation of :mod:`manualbp.ops.im2col`): pooling maps ``(N, C, H, W)`` to
``(N, C, OH, OW)`` with ``OH = (H + 2 PH - KH) // SH + 1`` (rows and columns that no window
reaches are dropped, as PyTorch's default ``ceil_mode=False``; with ``ceil_mode=True`` a last,
partial window is kept, :mod:`manualbp.ops.pool`; max-pooling pads with ``-inf``, average
pooling with zeros that count unless ``count_include_pad=False``, as PyTorch);
:class:`GlobalAvgPool2d` maps to ``(N, C)``, :class:`AdaptiveAvgPool2d` to ``(N, C, OH, OW)``
and :class:`Flatten` to ``(N, C * H * W)``.
"""
from .. import ops
from ..ops.im2col import pair
from ..ops.pool import adaptive_avg_pool2d, pool_output_size
from .base import Module


def _check_4d(layer, x):
    if x.ndim != 4:
        raise ValueError(f"{layer} expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")


class _Pool2d(Module):
    """Window geometry shared by max and average pooling (the ops pad the border)."""

    def __init__(self, bk, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__(bk)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = pair(padding, "padding")
        self.ceil_mode = bool(ceil_mode)
        if min(*self.kernel_size, *self.stride) < 1:
            raise ValueError(f"{self.kind}: kernel {self.kernel_size} and stride "
                             f"{self.stride} must be positive")
        if any(not 0 <= p <= k // 2 for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{self.kind}: padding {self.padding} must be between 0 and half the "
                             f"kernel {self.kernel_size}")

    def __repr__(self):
        ceil = ", ceil_mode=True" if self.ceil_mode else ""
        return f"{self.kind}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}{ceil})"

    def check(self, x):
        _check_4d(self.kind, x)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
        if kh > h or kw > w:
            raise ValueError(f"{self.kind}: kernel {kh}x{kw} is larger than the input {h}x{w} "
                             f"(with padding {self.padding}; input shape {tuple(x.shape)})")

    def settings(self, training):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "ceil_mode": self.ceil_mode}

    def output_shape(self, input_shape):
        """``(C, OH, OW)`` for a per-sample input shape ``(C, H, W)``."""
        c, h, w = input_shape
        return (c, *[pool_output_size(size, k, s, p, self.ceil_mode)
                     for size, k, s, p in zip((h, w), self.kernel_size, self.stride, self.padding)])


class MaxPool2d(_Pool2d):
    """Maximum over each ``KH x KW`` window moved by ``stride`` (default: the kernel size).

    The gradient of a window goes to its maximum; among equal maxima, to the first in row-major
    order (as PyTorch).
    """

    op = ops.max_pool2d


class AvgPool2d(_Pool2d):
    """Mean over each ``KH x KW`` window moved by ``stride`` (default: the kernel size); the
    gradient of a window is shared equally among its elements. ``count_include_pad=False``
    averages only the elements inside the input."""

    op = ops.avg_pool2d

    def __init__(self, bk, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        super().__init__(bk, kernel_size, stride, padding, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def __repr__(self):
        counted = "" if self.count_include_pad else ", count_include_pad=False"
        return super().__repr__()[:-1] + counted + ")"

    def settings(self, training):
        return {**super().settings(training), "count_include_pad": self.count_include_pad}


class GlobalAvgPool2d(Module):
    """Mean over the whole ``H x W`` map of each channel: ``(N, C, H, W)`` -> ``(N, C)``."""

    op = ops.global_avg_pool2d

    def check(self, x):
        _check_4d(self.kind, x)


class AdaptiveAvgPool2d(Module):
    """PyTorch's ``AdaptiveAvgPool2d(output_size)``: ``(N, C, H, W)`` -> ``(N, C, OH, OW)``, the
    mean over PyTorch's adaptive windows (``OH``, ``OW`` of any size, larger than the input too).
    ``output_size``: an int or a pair; ``None`` keeps that size of the input. Output size 1 (what
    ResNets use) runs :data:`~manualbp.ops.global_avg_pool2d` (kept 4-D), any other
    :data:`~manualbp.ops.pool.adaptive_avg_pool2d`."""

    def __init__(self, bk, output_size=1):
        super().__init__(bk)
        sizes = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * 2
        if len(sizes) != 2 or not all(s is None or (int(s) == s and s >= 1) for s in sizes):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be a positive int, None or a pair of "
                             f"those, got {output_size!r}")
        self.output_size = tuple(None if s is None else int(s) for s in sizes)
        self.op = ops.global_avg_pool2d if self.output_size == (1, 1) else adaptive_avg_pool2d

    def __repr__(self):
        return f"AdaptiveAvgPool2d(output_size={self.output_size})"

    def check(self, x):
        _check_4d(self.kind, x)

    def settings(self, training):
        if self.op is ops.global_avg_pool2d:
            return {"keepdims": True}
        return {"output_size": self.output_size}

    def output_shape(self, input_shape):
        c, *size = input_shape
        return (c, *[s if out is None else out for s, out in zip(size, self.output_size)])


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
