"""Element-wise activations ``x_next = phi(v)`` (Eq. 1); backward multiplies by ``phi'(v)`` (Eq. 2).

Shapes: any; output and gradients have the shape of the input.
"""
from .base import Module


class ReLU(Module):
    """``phi(v) = max(v, 0)``, ``phi'(v) = 1[v > 0]``."""

    def forward(self, v):
        self.active = v > 0
        return self.xp.maximum(v, 0)                                    # x = phi(v), Eq. (1)

    def backward(self, delta, input_grad=True):
        return delta * self.active                           # phi'(v) * delta, Eq. (2)


class LeakyReLU(Module):
    """``phi(v) = v`` for ``v > 0``, ``slope * v`` otherwise."""

    def __init__(self, bk, slope=0.01):
        super().__init__(bk)
        self.slope = slope

    def forward(self, v):
        self.active = v > 0
        return self.xp.where(self.active, v, self.slope * v)            # x = phi(v), Eq. (1)

    def backward(self, delta, input_grad=True):
        return self.xp.where(self.active, delta, self.slope * delta)    # phi'(v) * delta, Eq. (2)


class Sigmoid(Module):
    """``phi(v) = 1 / (1 + exp(-v))``, computed as ``(1 + tanh(v / 2)) / 2`` (no overflow);
    ``phi'(v) = phi(v) (1 - phi(v))``."""

    def forward(self, v):
        self.y = 0.5 * (1 + self.xp.tanh(0.5 * v))                      # x = phi(v), Eq. (1)
        return self.y

    def backward(self, delta, input_grad=True):
        return delta * self.y * (1 - self.y)                 # phi'(v) * delta, Eq. (2)


class Tanh(Module):
    """``phi(v) = tanh(v)``, ``phi'(v) = 1 - tanh(v)^2``."""

    def forward(self, v):
        self.y = self.xp.tanh(v)                                        # x = phi(v), Eq. (1)
        return self.y

    def backward(self, delta, input_grad=True):
        return delta * (1 - self.y * self.y)                 # phi'(v) * delta, Eq. (2)


ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "leaky_relu": LeakyReLU, "tanh": Tanh}
