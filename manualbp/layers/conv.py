"""2-D convolution by im2col and one matrix product: Eq. (1) for every neuron of a feature map."""
import math

from ..ops import conv2d
from ..ops.im2col import conv_geometry, pair
from .base import Module


class Conv2d(Module):
    """``v = w * x + b (+ z)``: a cross-correlation, as PyTorch's ``Conv2d``, plus optional noise.

    Every element ``v[n, o, oh, ow]`` of the output is one neuron of Eq. (1): the dot product of
    kernel ``o`` with the patch of ``x`` under it, plus the bias, plus the noise ``z``.

    Shapes (notation of :mod:`manualbp.ops.im2col`): ``x`` ``(N, C_in, H, W)`` ->
    ``v`` ``(N, C_out, OH, OW)``; ``weight`` ``(C_out, C_in / groups, KH, KW)`` (PyTorch's
    layout); ``bias`` ``(C_out,)``. ``kernel_size``, ``stride``, ``padding`` and ``dilation``
    (the spacing of the kernel's taps) are ints or pairs. With ``groups`` ``G`` (dividing both
    channel counts) output channel ``o`` sees only the ``C_in / G`` input channels of its group
    ``o // (C_out / G)``; ``groups = C_in`` is a depthwise convolution.

    ``noise`` (optional, a :class:`GaussianNoise` of shape ``(C_out, OH, OW)``) adds ``z`` to
    ``v`` -- one ``sigma`` (and, with ``learn_mean``, one ``mu``) per element of the feature map,
    the paper's Fig. 1 (right). It becomes the child ``"noise"`` (``"conv1.noise.sigma"``).
    Weights and bias start as PyTorch's do: uniform on ``+-1/sqrt(C_in / G KH KW)``. Runs the op
    :data:`~manualbp.ops.conv2d`.
    """

    op = conv2d

    def __init__(self, bk, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 noise=None, dilation=1, groups=1):
        super().__init__(bk)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride, self.padding = pair(stride, "stride"), pair(padding, "padding")
        self.dilation, self.groups = pair(dilation, "dilation"), int(groups)
        kh, kw = self.kernel_size
        if min(kh, kw, *self.stride, *self.dilation) < 1 or min(self.padding) < 0:
            raise ValueError(f"Conv2d: kernel {self.kernel_size}, stride {self.stride} and dilation "
                             f"{self.dilation} must be positive, padding {self.padding} non-negative")
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"Conv2d: groups {groups!r} must be a positive divisor of both in_channels "
                             f"{self.in_channels} and out_channels {self.out_channels}")
        fan_in = self.in_channels // self.groups
        bound = 1.0 / math.sqrt(fan_in * kh * kw)
        self.add_param("weight", bk.uniform(-bound, bound, (out_channels, fan_in, kh, kw)))
        if bias:
            self.add_param("bias", bk.uniform(-bound, bound, (out_channels,)))
        if noise is not None:
            self.children["noise"] = noise

    def __repr__(self):
        spread = "" if self.dilation == (1, 1) else f", dilation={self.dilation}"
        grouped = "" if self.groups == 1 else f", groups={self.groups}"
        return (f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}{spread}{grouped}, bias={'bias' in self.params})")

    def output_shape(self, input_shape):
        """``(C_out, OH, OW)`` for a per-sample input shape ``(C_in, H, W)``."""
        geometry = conv_geometry((1, *input_shape), self.kernel_size, self.stride, self.padding, self.dilation)
        return (self.out_channels, geometry[6], geometry[7])

    def check(self, x):
        """Raise a clear error unless ``x`` is ``(N, C_in, H, W)`` with room for the kernel."""
        if x.ndim != 4:
            raise ValueError(f"Conv2d expects a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Conv2d expects {self.in_channels} input channels, got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        conv_geometry(x.shape, self.kernel_size, self.stride, self.padding, self.dilation)

    def settings(self, training):
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation, "groups": self.groups}
