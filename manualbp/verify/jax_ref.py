"""The JAX reference: each manualbp layer written with ``jax.numpy`` / ``jax.lax`` on the same
arrays, differentiated by ``jax.value_and_grad`` and compiled once by ``jax.jit``. Imported only
when a JAX comparison is asked for; float64 comparisons switch on JAX's ``jax_enable_x64``."""
import jax
import jax.numpy as jnp
from jax import lax

from .walk import Walker, register


@register("jax", "Linear")
def linear(w, m, x, path):
    v = x @ w.array(path, "weight").T
    if "bias" in m.params:
        v = v + w.array(path, "bias")
    return w.noise(m, v, path)


@register("jax", "Conv2d")
def conv2d(w, m, x, path):
    (ph, pw) = m.padding
    v = lax.conv_general_dilated(x, w.array(path, "weight"), window_strides=tuple(m.stride),
                                 padding=[(ph, ph), (pw, pw)],
                                 dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                 precision=lax.Precision.HIGHEST)
    if "bias" in m.params:
        v = v + w.array(path, "bias").reshape(1, -1, 1, 1)
    return w.noise(m, v, path)


def _pool(x, m, init, op):
    window, strides = (1, 1) + tuple(m.kernel_size), (1, 1) + tuple(m.stride)
    (ph, pw) = m.padding
    return lax.reduce_window(x, x.dtype.type(init), op, window, strides,     # a constant: differentiable
                             [(0, 0), (0, 0), (ph, ph), (pw, pw)])


@register("jax", "MaxPool2d")
def max_pool2d(w, m, x, path):
    return _pool(x, m, -jnp.inf, lax.max)


@register("jax", "AvgPool2d")
def avg_pool2d(w, m, x, path):
    (kh, kw) = m.kernel_size
    return _pool(x, m, 0, lax.add) / (kh * kw)


@register("jax", "GlobalAvgPool2d")
def global_avg_pool2d(w, m, x, path):
    return x.mean(axis=(2, 3))


@register("jax", "AdaptiveAvgPool2d")
def adaptive_avg_pool2d(w, m, x, path):
    return x.mean(axis=(2, 3), keepdims=True)


@register("jax", "Flatten")
def flatten(w, m, x, path):
    return x.reshape(x.shape[0], -1)


@register("jax", "ReLU")
def relu(w, m, x, path):
    return jnp.where(x > 0, x, 0)           # derivative 0 at 0, as the engine's and PyTorch's


@register("jax", "LeakyReLU")
def leaky_relu(w, m, x, path):
    return jnp.where(x > 0, x, m.slope * x)


@register("jax", "Sigmoid")
def sigmoid(w, m, x, path):
    return jax.nn.sigmoid(x)


@register("jax", "Tanh")
def tanh(w, m, x, path):
    return jnp.tanh(x)


@register("jax", "Dropout")
def dropout(w, m, x, path):
    mask = w.mask(m, path)
    return x if mask is None else x * jnp.asarray(mask, dtype=x.dtype)


@register("jax", "BatchNorm1d", "BatchNorm2d")
def batch_norm(w, m, x, path):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if m.training:
        axes = (0,) + tuple(range(2, x.ndim))
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    else:
        mean = w.array(path, "running_mean").reshape(shape)
        var = w.array(path, "running_var").reshape(shape)
    xhat = (x - mean) / jnp.sqrt(var + m.floor)
    return xhat * w.array(path, "weight").reshape(shape) + w.array(path, "bias").reshape(shape)


def version():
    return f"jax {jax.__version__}"


def reference(model, x, y, arrays, trainable, eps):
    """Forward and backward in JAX; arguments and result as :func:`torch_ref.reference`."""
    if x.dtype.name == "float64":
        jax.config.update("jax_enable_x64", True)
    constants = {name: jnp.asarray(a) for name, a in arrays.items() if name not in trainable}
    params = {name: jnp.asarray(arrays[name]) for name in trainable}
    draws = {path: jnp.asarray(e) for path, e in eps.items()}
    labels = jnp.asarray(y.astype("int32"))

    def loss_fn(params, x):
        logits = Walker("jax", {**constants, **params}, draws).run(model, x)
        log_p = jax.nn.log_softmax(logits, axis=1)
        return -jnp.mean(log_p[jnp.arange(len(y)), labels]), logits

    step = jax.jit(jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True))   # one compilation
    (loss, logits), (grad_params, grad_x) = step(params, jnp.asarray(x))
    host = jax.device_get
    return {"logits": host(logits), "loss": host(loss), "input": host(grad_x),
            "grads": {name: host(grad_params[name]) for name in trainable}}
