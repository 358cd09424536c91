"""Fully connected layer: the linear part of Eq. (1), with its backward from Eq. (2)."""
import math

from .base import Module


class Linear(Module):
    """``v = x theta^T + b (+ z)`` -- Eq. (1) for every neuron of a dense layer.

    Shapes: ``x`` ``(N, in_features)`` -> ``v`` ``(N, out_features)``; ``weight`` (theta)
    ``(out_features, in_features)``; ``bias`` ``(out_features,)``.

    ``noise`` (optional, a :class:`GaussianNoise` of shape ``(out_features,)``) adds the noise
    term ``z`` of Eq. (1) to ``v``; it becomes the child ``"noise"`` (``"fc1.noise.sigma"``).
    Weights start as PyTorch's do: uniform on ``+-1/sqrt(in_features)``.
    """

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

    def forward(self, x):
        self.check(x)
        self.x = x
        v = x @ self.params["weight"].T                      # sum_j theta_ij x_j, Eq. (1)
        if "bias" in self.params:
            v = v + self.params["bias"]                                 # theta_i0 * x_0, x_0 = 1, Eq. (1)
        if "noise" in self.children:
            v = self.children["noise"].forward(v)            # + z_i, Eq. (1)
        return v

    def backward(self, delta, input_grad=True):
        """``delta``: ``dL/dv`` ``(N, out_features)``; returns ``theta^T delta`` (Eq. 2)."""
        if "noise" in self.children:
            delta = self.children["noise"].backward(delta)   # fills dL/dsigma, Eq. (3)
        if self.param_grads:
            self.grads["weight"] = delta.T @ self.x                     # dL/dtheta_ij = delta_i x_j, beside Eq. (2)
            if "bias" in self.params:
                self.grads["bias"] = delta.sum(axis=0)                  # dL/dtheta_i0 = delta_i (x_0 = 1), beside Eq. (2)
        if input_grad:
            return delta @ self.params["weight"]             # sum_j theta_ji delta_j, Eq. (2)
        return None
