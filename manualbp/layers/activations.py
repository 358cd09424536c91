"""Element-wise activations ``x_next = phi(v)`` (Eq. 1) whose backward multiplies by
``phi'(v)`` (Eq. 2): each runs its op of :mod:`manualbp.ops.activations`.

Shapes: any; output and gradients have the shape of the input.
"""
from .. import ops
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


ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "leaky_relu": LeakyReLU, "tanh": Tanh}
