"""Fast batch normalisation: :class:`~manualbp.layers.norm.BatchNorm1d` / ``BatchNorm2d`` with
the per-feature sums as one ``einsum`` pass each and the element-wise work on threads, in the
input's memory layout."""
from ..layers.norm import BatchNorm1d, BatchNorm2d
from ..parallel import parallel_blocks


def gradient_arrays(layer):
    """Where a batch norm's ``(dL/dweight, dL/dbias)`` are written: its ``grads`` when they are
    wanted (in place, so the parameter store need not copy them), else arrays of their own
    (``dL/dx`` needs them with batch statistics)."""
    if layer.param_grads:
        return layer.grads["weight"], layer.grads["bias"]
    return layer.xp.empty_like(layer.grads["weight"]), layer.xp.empty_like(layer.grads["bias"])


class _BatchNormKernel:
    """The fast forward and backward shared by both batch norms (mixed in before the layer)."""

    def _dot(self, a, b):
        """``sum(a * b)`` per feature, over the batch (and spatial) axes, in one pass."""
        spec = "nc,nc->c" if self.ndim == 2 else "nchw,nchw->c"
        return self.xp.einsum(spec, a, b)

    def _blocks(self, x, work):
        """Run the element-wise ``work(index, feature_index)`` on blocks of features or samples
        of ``x`` -- ``x[index]`` is a block, ``a[feature_index]`` the same features of a
        per-feature array -- on threads for a large ``x``."""
        parallel_blocks(self.xp, self.num_features, len(x), x.size,
                        lambda cs, ns: work((ns, cs), (slice(None), cs)))

    def forward(self, x):
        self.check(x)
        xp = self.xp
        weight, bias = self._per_feature("weight", self.params), self._per_feature("bias", self.params)
        xhat, out = xp.empty_like(x), xp.empty_like(x)
        if self.training:
            count = x.size // self.num_features
            mean = x.mean(axis=self.axes, keepdims=True)
        else:
            mean = self._per_feature("running_mean", self.buffers)
        self._blocks(x, lambda i, f: xp.subtract(x[i], mean[f], out=xhat[i]))       # x - mean
        if self.training:
            var = self._dot(xhat, xhat).reshape(self.shape) / count
            self.count = count
            self.update_running(mean, var, count)
        else:
            var = self._per_feature("running_var", self.buffers)
        self.inv_std = inv_std = 1.0 / xp.sqrt(var + self.floor)
        self.xhat = xhat

        def normalise(i, f):                                  # y = weight * xhat + bias
            xhat[i] *= inv_std[f]
            xp.multiply(xhat[i], weight[f], out=out[i])
            out[i] += bias[f]

        self._blocks(x, normalise)
        return out

    def backward(self, delta, input_grad=True):
        xp = self.xp
        grad_w, grad_b = gradient_arrays(self)
        if self.param_grads or self.training:
            grad_w[...] = self._dot(delta, self.xhat)
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


class BatchNorm1dKernel(_BatchNormKernel, BatchNorm1d):
    """What :class:`~manualbp.layers.norm.BatchNorm1d` computes, faster."""


class BatchNorm2dKernel(_BatchNormKernel, BatchNorm2d):
    """What :class:`~manualbp.layers.norm.BatchNorm2d` computes, faster."""
