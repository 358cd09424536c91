"""Batch normalisation (Ioffe & Szegedy, 2015) with its closed-form backward.

One implementation serves dense and convolutional layers: statistics are taken per feature over
the batch axis (``BatchNorm1d``, input ``(N, F)``) or per channel over the batch and spatial axes
(``BatchNorm2d``, input ``(N, C, H, W)``). Conventions follow PyTorch: ``eps = 1e-5``, running
statistics ``r <- (1 - momentum) r + momentum * batch statistic`` with ``momentum = 0.1``, and the
running variance updated with the unbiased batch variance.
"""
from ..parallel import parallel_blocks
from .base import Module


class _BatchNorm(Module):
    """``y = weight * xhat + bias``, ``xhat = (x - mean) / sqrt(var + eps)``.

    Training mode normalises with the statistics of the batch (biased variance) and updates the
    running statistics; evaluation mode normalises with the running statistics.

    Parameters: ``weight`` (scale, ones) and ``bias`` (shift, zeros), both ``(features,)``.
    Buffers: ``running_mean`` (zeros) and ``running_var`` (ones), both ``(features,)``.
    """

    axes = None             # the axes reduced over: the batch axis, and the spatial axes of a map
    ndim = None
    per_feature_dot = None  # einsum of sum(a * b) over those axes

    def __init__(self, bk, num_features, momentum=0.1, eps=1e-5):
        super().__init__(bk)
        self.num_features, self.momentum, self.eps = int(num_features), momentum, eps
        self.add_param("weight", bk.full((self.num_features,), 1.0))
        self.add_param("bias", bk.zeros((self.num_features,)))
        self.buffers["running_mean"] = bk.zeros((self.num_features,))
        self.buffers["running_var"] = bk.full((self.num_features,), 1.0)
        self.shape = (1, self.num_features) + (1,) * (self.ndim - 2)   # broadcasts over x

    def _per_feature(self, name, source):
        return source[name].reshape(self.shape)

    def forward(self, x):
        if x.ndim != self.ndim or x.shape[1] != self.num_features:
            layout = "(N, F)" if self.ndim == 2 else "(N, C, H, W)"
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects input {layout} "
                             f"with {self.num_features} at axis 1, got {tuple(x.shape)}")
        xp = self.xp
        weight, bias = self._per_feature("weight", self.params), self._per_feature("bias", self.params)
        xhat, out = xp.empty_like(x), xp.empty_like(x)
        if self.training:
            count = x.size // self.num_features               # values per feature in the batch
            if count < 2:
                raise ValueError(f"{type(self).__name__} needs more than one value per feature "
                                 f"in training mode, got input {tuple(x.shape)}")
            mean = x.mean(axis=self.axes, keepdims=True)
        else:
            mean = self._per_feature("running_mean", self.buffers)
        self._blocks(x, lambda i, f: xp.subtract(x[i], mean[f], out=xhat[i]))       # x - mean
        if self.training:
            var = xp.einsum(self.per_feature_dot, xhat, xhat).reshape(self.shape) / count
            self.count = count
            m = self.momentum
            running_mean, running_var = self.buffers["running_mean"], self.buffers["running_var"]
            running_mean *= 1 - m
            running_mean += m * mean.reshape(-1)
            running_var *= 1 - m
            running_var += (m * count / (count - 1)) * var.reshape(-1)   # unbiased variance
        else:
            var = self._per_feature("running_var", self.buffers)
        self.inv_std = inv_std = 1.0 / xp.sqrt(var + self.eps)
        self.xhat = xhat

        def normalise(i, f):                                  # y = weight * xhat + bias
            xhat[i] *= inv_std[f]                             # xhat = (x - mean) / sqrt(var + eps)
            xp.multiply(xhat[i], weight[f], out=out[i])
            out[i] += bias[f]

        self._blocks(x, normalise)
        return out

    def _blocks(self, x, work):
        """Run the element-wise ``work(index, feature_index)`` on blocks of features or samples
        of ``x`` -- ``x[index]`` is a block, ``a[feature_index]`` the same features of a
        per-feature array -- on threads for a large ``x`` (see :mod:`manualbp.parallel`)."""
        parallel_blocks(self.xp, self.num_features, len(x), x.size,
                        lambda cs, ns: work((ns, cs), (slice(None), cs)))

    def backward(self, delta, input_grad=True):
        """``dL/dweight = sum delta * xhat``, ``dL/dbias = sum delta``. With batch statistics
        ``dL/dx = weight * inv_std * (delta - (dL/dbias + xhat * dL/dweight) / n)`` (the closed
        form of ``inv_std / n * (n dxhat - sum dxhat - xhat sum dxhat xhat)``,
        ``dxhat = weight * delta``); with running statistics ``dL/dx = weight * inv_std * delta``."""
        xp = self.xp
        grad_w, grad_b = self.grads["weight"], self.grads["bias"]
        if self.param_grads or self.training:                 # dL/dx needs them with batch statistics
            grad_w[...] = xp.einsum(self.per_feature_dot, delta, self.xhat)   # sum delta * xhat
            xp.sum(delta, axis=self.axes, out=grad_b)
        if not input_grad:
            return None
        scale = self._per_feature("weight", self.params) * self.inv_std
        dx = xp.empty_like(delta)
        if not self.training:
            self._blocks(delta, lambda i, f: xp.multiply(delta[i], scale[f], out=dx[i]))
            return dx
        n = self.count
        gw, gb = grad_w.reshape(self.shape) * (-1.0 / n), grad_b.reshape(self.shape) * (-1.0 / n)

        def input_gradient(i, f):
            xp.multiply(self.xhat[i], gw[f], out=dx[i])        # -xhat sum(delta xhat) / n
            dx[i] += gb[f]                                    # - sum(delta) / n
            dx[i] += delta[i]                                 # + delta
            dx[i] *= scale[f]                                 # * weight * inv_std

        self._blocks(delta, input_gradient)
        return dx


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of dense features: input ``(N, F)``, statistics over the batch."""

    axes = (0,)
    ndim = 2
    per_feature_dot = "nc,nc->c"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of feature maps: input ``(N, C, H, W)``, statistics per channel over
    the batch and both spatial axes."""

    axes = (0, 2, 3)
    ndim = 4
    per_feature_dot = "nchw,nchw->c"
