"""Fully connected layer: the linear part of Eq. (1), with its backward from Eq. (2)."""
import math

from ..ops import linear
from .base import Module


class Linear(Module):
    """``v = x theta^T + b (+ z)`` -- Eq. (1) for every neuron of a dense layer.

    Shapes: ``x`` ``(N, in_features)`` -> ``v`` ``(N, out_features)``; ``weight`` (theta)
    ``(out_features, in_features)``; ``bias`` ``(out_features,)``.

    ``noise`` (optional, a :class:`GaussianNoise` of shape ``(out_features,)``) adds the noise
    term ``z`` of Eq. (1) to ``v``; it becomes the child ``"noise"`` (``"fc1.noise.sigma"``).
    Weights start as PyTorch's do: uniform on ``+-1/sqrt(in_features)``. Runs the op
    :data:`~manualbp.ops.linear`.
    """

    op = linear

    def __init__(self, bk, in_features, out_features, bias=True, noise=None):
        super().__init__(bk)
        self.in_features, self.out_features = in_features, out_features
        bound = 1.0 / math.sqrt(in_features)
        self.add_param("weight", bk.uniform(-bound, bound, (out_features, in_features)))
        if bias:
            self.add_param("bias", bk.uniform(-bound, bound, (out_features,)))
        if noise is not None:
            self.children["noise"] = noise

    def check(self, x):
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"Linear expects input (N, {self.in_features}), got {tuple(x.shape)}")
