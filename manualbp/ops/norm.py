"""``batch_norm`` (Ioffe & Szegedy, 2015) with its closed-form backward, as PyTorch's
``F.batch_norm`` computes it: statistics per feature over the batch axis (input ``(N, F)``) or
per channel over the batch and spatial axes (input ``(N, C, H, W)``); ``floor`` is PyTorch's
``eps`` (here ``eps`` is always the noise draw); in training the running statistics are updated
in place, ``r <- (1 - momentum) r + momentum * batch statistic``, the variance unbiased."""
from ..parallel import parallel_blocks
from .base import Op, put


def per_feature(x):
    """``(axes reduced over, shape that broadcasts a per-feature array over x)``."""
    return (0,) + tuple(range(2, x.ndim)), (1, -1) + (1,) * (x.ndim - 2)


def update_running(running_mean, running_var, mean, var, count, momentum):
    """``r <- (1 - momentum) r + momentum * statistic``, in place; the variance unbiased."""
    m = momentum
    running_mean[...] = (1 - m) * running_mean + m * mean.reshape(-1)
    running_var[...] = (1 - m) * running_var + m * count / (count - 1) * var.reshape(-1)


def batch_norm_forward(xp, x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
                       floor=1e-5):
    """``y = weight * xhat + bias``, ``xhat = (x - mean) / sqrt(var + floor)``: in training with
    the batch's statistics (biased variance), which also update the running ones; in evaluation
    with the running statistics."""
    axes, shape = per_feature(x)
    if training:
        mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        update_running(running_mean, running_var, mean, var, x.size // x.shape[1], momentum)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    inv_std = 1 / xp.sqrt(var + floor)
    xhat = (x - mean) * inv_std                            # xhat = (x - mean) / sqrt(var + floor)
    return weight.reshape(shape) * xhat + bias.reshape(shape), (xhat, inv_std, weight, training)


def batch_norm_backward(xp, delta, cache, need):
    """``dL/dweight = sum delta * xhat``, ``dL/dbias = sum delta``. With batch statistics
    ``dL/dx = weight * inv_std * (delta - (dL/dbias + xhat * dL/dweight) / n)`` (the closed form
    of ``inv_std / n * (n dxhat - sum dxhat - xhat sum dxhat xhat)``, ``dxhat = weight * delta``);
    with running statistics ``dL/dx = weight * inv_std * delta``."""
    xhat, inv_std, weight, batch = cache
    axes, shape = per_feature(delta)
    grad_w = (delta * xhat).sum(axis=axes)
    grad_b = delta.sum(axis=axes)
    dx = None
    if need[0]:
        scale = weight.reshape(shape) * inv_std
        if not batch:
            dx = scale * delta
        else:
            n = delta.size // delta.shape[1]
            dx = scale * (delta - (grad_b.reshape(shape) + xhat * grad_w.reshape(shape)) / n)
    return dx, put(need[1], grad_w), put(need[2], grad_b), None, None


batch_norm = Op("batch_norm", ("x", "weight", "bias", "running_mean", "running_var"),
                batch_norm_forward, batch_norm_backward)


def _gradient_arrays(xp, need, weight):
    """Where ``(dL/dweight, dL/dbias)`` go: the arrays ``need`` gives, else new ones (``dL/dx``
    needs them with batch statistics)."""
    return tuple(xp.empty_like(weight) if flag is None or flag is True else flag for flag in need[1:3])


# --- NumPy: per-feature sums as one einsum pass each, element-wise work on threads ---------------
def _dot(xp, a, b):
    """``sum(a * b)`` per feature, over the batch (and spatial) axes, in one pass."""
    return xp.einsum("nc,nc->c" if a.ndim == 2 else "nchw,nchw->c", a, b)


def _blocks(xp, x, work):
    """Run the element-wise ``work(index, feature_index)`` on blocks of features or samples of
    ``x`` -- ``x[index]`` a block, ``a[feature_index]`` the same features of a per-feature
    array -- on threads for a large ``x``."""
    parallel_blocks(xp, x.shape[1], len(x), x.size, lambda cs, ns: work((ns, cs), (slice(None), cs)))


def batch_norm_forward_threads(xp, x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
                               floor=1e-5):
    """The reference's ``y``, in ``x``'s memory layout."""
    axes, shape = per_feature(x)
    w, b = weight.reshape(shape), bias.reshape(shape)
    xhat, out = xp.empty_like(x), xp.empty_like(x)
    mean = x.mean(axis=axes, keepdims=True) if training else running_mean.reshape(shape)
    _blocks(xp, x, lambda i, f: xp.subtract(x[i], mean[f], out=xhat[i]))         # x - mean
    if training:
        count = x.size // x.shape[1]
        var = _dot(xp, xhat, xhat).reshape(shape) / count
        update_running(running_mean, running_var, mean, var, count, momentum)
    else:
        var = running_var.reshape(shape)
    inv_std = 1.0 / xp.sqrt(var + floor)

    def normalise(i, f):                                   # y = weight * xhat + bias
        xhat[i] *= inv_std[f]
        xp.multiply(xhat[i], w[f], out=out[i])
        out[i] += b[f]

    _blocks(xp, x, normalise)
    return out, (xhat, inv_std, weight, training)


def batch_norm_backward_threads(xp, delta, cache, need):
    """The reference's gradients, the parameters' written in place."""
    xhat, inv_std, weight, batch = cache
    axes, shape = per_feature(delta)
    grad_w, grad_b = _gradient_arrays(xp, need, weight)
    if need[1] is not None or need[2] is not None or (batch and need[0]):
        grad_w[...] = _dot(xp, delta, xhat)
        xp.sum(delta, axis=axes, out=grad_b)
    dx = None
    if need[0]:
        scale = weight.reshape(shape) * inv_std
        dx = xp.empty_like(delta)
        if not batch:
            _blocks(xp, delta, lambda i, f: xp.multiply(delta[i], scale[f], out=dx[i]))
        else:
            n = delta.size // delta.shape[1]
            gw, gb = grad_w.reshape(shape) * (-1.0 / n), grad_b.reshape(shape) * (-1.0 / n)

            def input_gradient(i, f):
                xp.multiply(xhat[i], gw[f], out=dx[i])     # -xhat sum(delta xhat) / n
                dx[i] += gb[f]                             # - sum(delta) / n
                dx[i] += delta[i]                          # + delta
                dx[i] *= scale[f]                          # * weight * inv_std

            _blocks(xp, delta, input_gradient)
    return dx, _wanted(need[1], grad_w), _wanted(need[2], grad_b), None, None


def _wanted(flag, value):
    return None if flag is None else value


batch_norm.kernel("numpy", batch_norm_forward_threads, batch_norm_backward_threads)


# --- CuPy: every result in its input's layout ---------------------------------------------------
def batch_norm_forward_in_layout(xp, x, weight, bias, running_mean, running_var, training=True, momentum=0.1,
                                 floor=1e-5):
    """The reference's ``y`` in ``x``'s layout; the running statistics updated in place
    (``r *= 1 - momentum``, then ``r += momentum * statistic``: 3 launches, not 4, bitwise the
    reference's)."""
    axes, shape = per_feature(x)
    if training:
        mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
        count = x.size // x.shape[1]
        for running, statistic in ((running_mean, momentum * mean),
                                   (running_var, momentum * count / (count - 1) * var)):
            running *= 1 - momentum
            running += statistic.reshape(-1)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    inv_std = 1 / xp.sqrt(var + floor)
    xhat = xp.subtract(x, mean, out=xp.empty_like(x))
    xhat *= inv_std
    y = xp.multiply(weight.reshape(shape), xhat, out=xp.empty_like(x))
    y += bias.reshape(shape)
    return y, (xhat, inv_std, weight, training)


def batch_norm_backward_in_layout(xp, delta, cache, need):
    """The reference's gradients in ``delta``'s layout, the parameters' written in place and
    skipped when neither they nor ``dL/dx`` need them (an attack in evaluation mode)."""
    xhat, inv_std, weight, batch = cache
    axes, shape = per_feature(delta)
    grad_w, grad_b = _gradient_arrays(xp, need, weight)
    product = None
    if need[1] is not None or need[2] is not None or batch:
        product = xp.multiply(delta, xhat, out=xp.empty_like(delta))
        product.sum(axis=axes, out=grad_w)                 # sum delta * xhat
        delta.sum(axis=axes, out=grad_b)                   # sum delta
    dx = None
    if need[0]:
        scale = weight.reshape(shape) * inv_std
        dx = xp.multiply(scale, delta, out=xp.empty_like(delta))
        if batch:                                          # scale * (delta - (dL/dbias + xhat dL/dweight) / n)
            correction = xp.multiply(xhat, grad_w.reshape(shape), out=product)
            correction += grad_b.reshape(shape)
            correction *= scale / (delta.size // delta.shape[1])
            dx -= correction
    return dx, _wanted(need[1], grad_w), _wanted(need[2], grad_b), None, None


batch_norm.kernel("cupy", batch_norm_forward_in_layout, batch_norm_backward_in_layout)


@batch_norm.rule("torch")
def batch_norm_torch(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, floor=1e-5):
    import torch.nn.functional as F
    return F.batch_norm(x, running_mean, running_var, weight, bias, training=training, momentum=momentum,
                        eps=floor)


@batch_norm.rule("jax")
def batch_norm_jax(x, weight, bias, running_mean, running_var, training=True, momentum=0.1, floor=1e-5):
    import jax.numpy as jnp
    axes, shape = per_feature(x)
    if training:
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    xhat = (x - mean) / jnp.sqrt(var + floor)
    return xhat * weight.reshape(shape) + bias.reshape(shape)


@batch_norm.traces("aten.batch_norm.default")
def batch_norm_from_trace(call, input, weight, bias, running_mean, running_var, training, momentum, eps,
                          cudnn_enabled):
    """``F.batch_norm`` of a ``BatchNorm1d`` / ``BatchNorm2d`` with ``affine=True`` and running
    statistics: ``eps`` becomes ``floor``."""
    if input.ndim not in (2, 4):
        call.refuse(f"batch_norm of a {input.ndim}-D input; expected (N, F) or (N, C, H, W)")
    if weight is None or bias is None:
        call.refuse("batch_norm without weight or bias (affine=False); expected both")
    if running_mean is None or running_var is None:
        call.refuse("batch_norm without running statistics (track_running_stats=False); expected both")
    if momentum is None:
        call.refuse("batch_norm with momentum=None (a cumulative average); expected a momentum")
    return (input, weight, bias, running_mean, running_var), {"training": bool(training),
                                                              "momentum": float(momentum), "floor": float(eps)}
