"""Batch normalisation (Ioffe & Szegedy, 2015) with its closed-form backward.

One implementation serves dense and convolutional layers: statistics are taken per feature over
the batch axis (``BatchNorm1d``, input ``(N, F)``) or per channel over the batch and spatial axes
(``BatchNorm2d``, input ``(N, C, H, W)``). Conventions follow PyTorch: ``floor = 1e-5`` (PyTorch's
``eps``; here ``eps`` is always the noise draw), running
statistics ``r <- (1 - momentum) r + momentum * batch statistic`` with ``momentum = 0.1``, and the
running variance updated with the unbiased batch variance.
"""
from .base import Module


class _BatchNorm(Module):
    """``y = weight * xhat + bias``, ``xhat = (x - mean) / sqrt(var + floor)``.

    Training mode normalises with the statistics of the batch (biased variance) and updates the
    running statistics; evaluation mode normalises with the running statistics.

    Parameters: ``weight`` (scale, ones) and ``bias`` (shift, zeros), both ``(features,)``.
    Buffers: ``running_mean`` (zeros) and ``running_var`` (ones), both ``(features,)``.
    """

    axes = None             # the axes reduced over: the batch axis, and the spatial axes of a map
    running_statistics = ("running_mean", "running_var")   # buffers estimated from training batches
    ndim = None

    def __init__(self, bk, num_features, momentum=0.1, floor=1e-5):
        super().__init__(bk)
        self.num_features, self.momentum, self.floor = int(num_features), momentum, floor
        self.add_param("weight", bk.full((self.num_features,), 1.0))
        self.add_param("bias", bk.zeros((self.num_features,)))
        self.buffers["running_mean"] = bk.zeros((self.num_features,))
        self.buffers["running_var"] = bk.full((self.num_features,), 1.0)
        self.shape = (1, self.num_features) + (1,) * (self.ndim - 2)   # broadcasts over x

    def _per_feature(self, name, source):
        return source[name].reshape(self.shape)

    def check(self, x):
        if x.ndim != self.ndim or x.shape[1] != self.num_features:
            layout = "(N, F)" if self.ndim == 2 else "(N, C, H, W)"
            raise ValueError(f"{self.kind}({self.num_features}) expects input {layout} "
                             f"with {self.num_features} at axis 1, got {tuple(x.shape)}")
        if self.training and x.size // self.num_features < 2:
            raise ValueError(f"{self.kind} needs more than one value per feature "
                             f"in training mode, got input {tuple(x.shape)}")

    def update_running(self, mean, var, count):
        """``r <- (1 - momentum) r + momentum * batch statistic``, the variance unbiased."""
        m, buffers = self.momentum, self.buffers
        buffers["running_mean"][...] = (1 - m) * buffers["running_mean"] + m * mean.reshape(-1)
        buffers["running_var"][...] = (1 - m) * buffers["running_var"] + m * count / (count - 1) * var.reshape(-1)

    def statistics(self, x):
        """``(mean, var)`` that normalise ``x``: in training the batch's, which also update the
        running statistics; in evaluation the running ones."""
        if not self.training:
            return self._per_feature("running_mean", self.buffers), self._per_feature("running_var", self.buffers)
        self.count = x.size // self.num_features              # values per feature in the batch
        mean, var = x.mean(axis=self.axes, keepdims=True), x.var(axis=self.axes, keepdims=True)
        self.update_running(mean, var, self.count)
        return mean, var

    def parameter_gradients(self, delta):
        """``(dL/dweight, dL/dbias) = (sum delta * xhat, sum delta)``, kept in ``grads`` when
        the parameters' gradients are wanted."""
        grad_w = (delta * self.xhat).sum(axis=self.axes)
        grad_b = delta.sum(axis=self.axes)
        if self.param_grads:
            self.grads["weight"], self.grads["bias"] = grad_w, grad_b
        return grad_w, grad_b

    def forward(self, x):
        self.check(x)
        mean, var = self.statistics(x)
        self.inv_std = 1 / self.xp.sqrt(var + self.floor)
        self.xhat = (x - mean) * self.inv_std                  # xhat = (x - mean) / sqrt(var + floor)
        return self._per_feature("weight", self.params) * self.xhat + self._per_feature("bias", self.params)

    def backward(self, delta, input_grad=True):
        """``dL/dweight = sum delta * xhat``, ``dL/dbias = sum delta``. With batch statistics
        ``dL/dx = weight * inv_std * (delta - (dL/dbias + xhat * dL/dweight) / n)`` (the closed
        form of ``inv_std / n * (n dxhat - sum dxhat - xhat sum dxhat xhat)``,
        ``dxhat = weight * delta``); with running statistics ``dL/dx = weight * inv_std * delta``."""
        grad_w, grad_b = self.parameter_gradients(delta)
        if not input_grad:
            return None
        scale = self._per_feature("weight", self.params) * self.inv_std
        if not self.training:
            return scale * delta
        gw, gb = grad_w.reshape(self.shape), grad_b.reshape(self.shape)
        return scale * (delta - (gb + self.xhat * gw) / self.count)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of dense features: input ``(N, F)``, statistics over the batch."""

    axes = (0,)
    ndim = 2


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of feature maps: input ``(N, C, H, W)``, statistics per channel over
    the batch and both spatial axes."""

    axes = (0, 2, 3)
    ndim = 4
