"""Element-wise activations ``x_next = phi(v)`` (Eq. 1) whose backward multiplies by
``phi'(v)`` (Eq. 2): each runs its op of :mod:`manualbp.ops.activations`.

Shapes: any; output and gradients have the shape of the input.
"""
from .. import ops
from ..ops.activations import gelu, hardsigmoid, hardswish, hardtanh, silu
from .base import Module


class ReLU(Module):
    """``phi(v) = max(v, 0)``, ``phi'(v) = 1[v > 0]``."""

    op = ops.relu


class LeakyReLU(Module):
    """``phi(v) = v`` for ``v > 0``, ``slope * v`` otherwise."""

    op = ops.leaky_relu

    def __init__(self, bk, slope=0.01):
        super().__init__(bk)
        self.slope = slope

    def settings(self, training):
        return {"slope": self.slope}


class Sigmoid(Module):
    """``phi(v) = 1 / (1 + exp(-v))``, ``phi'(v) = phi(v) (1 - phi(v))``."""

    op = ops.sigmoid


class Tanh(Module):
    """``phi(v) = tanh(v)``, ``phi'(v) = 1 - tanh(v)^2``."""

    op = ops.tanh


class Hardtanh(Module):
    """``phi(v) = min(max(v, min_value), max_value)``, ``phi'(v) = 1[min_value < v < max_value]``;
    ReLU6 is ``Hardtanh(bk, 0, 6)``."""

    op = hardtanh

    def __init__(self, bk, min_value=-1.0, max_value=1.0):
        super().__init__(bk)
        self.min_value, self.max_value = min_value, max_value

    def settings(self, training):
        return {"min_value": self.min_value, "max_value": self.max_value}


class Hardswish(Module):
    """``phi(v) = v min(max(v + 3, 0), 6) / 6``."""

    op = hardswish


class Hardsigmoid(Module):
    """``phi(v) = min(max(v + 3, 0), 6) / 6``."""

    op = hardsigmoid


class SiLU(Module):
    """``phi(v) = v / (1 + exp(-v))``."""

    op = silu


class GELU(Module):
    """``phi(v) = v Phi(v)``, ``Phi`` the standard normal CDF (``approximate="none"``) or its tanh
    approximation (``"tanh"``)."""

    op = gelu

    def __init__(self, bk, approximate="none"):
        super().__init__(bk)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def settings(self, training):
        return {"approximate": self.approximate}


ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "leaky_relu": LeakyReLU, "tanh": Tanh}
