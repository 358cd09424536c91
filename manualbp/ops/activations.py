"""Element-wise activations ``x_next = phi(v)`` (Eq. 1); backward multiplies by ``phi'(v)``
(Eq. 2). Shapes: any; output and gradients have the shape of the input."""
from ..parallel import PARALLEL_MIN_SIZE, parallel_blocks
from .base import Op


def relu_forward(xp, v):
    """``phi(v) = max(v, 0)``, ``phi'(v) = 1[v > 0]``."""
    return xp.maximum(v, 0), v > 0                                     # x = phi(v), Eq. (1)


def relu_backward(xp, delta, active, need):
    return (delta * active if need[0] else None,)                      # phi'(v) * delta, Eq. (2)


relu = Op("relu", ("v",), relu_forward, relu_backward)


def relu_forward_in_layout(xp, v):
    """The reference's, in ``v``'s memory layout (CuPy's element-wise results are C-ordered)."""
    active = xp.greater(v, 0, out=xp.empty_like(v, dtype=bool))
    return xp.maximum(v, 0, out=xp.empty_like(v)), active


def relu_backward_in_layout(xp, delta, active, need):
    return (xp.multiply(delta, active, out=xp.empty_like(delta)) if need[0] else None,)


relu.kernel("cupy", relu_forward_in_layout, relu_backward_in_layout)


def relu_forward_threads(xp, v):
    """The reference's, in ``v``'s memory layout, by blocks of channels (or samples) on threads
    (a small ``v``: the reference itself)."""
    if v.size < PARALLEL_MIN_SIZE:
        return relu_forward(xp, v)
    out, active = xp.empty_like(v), xp.empty_like(v, dtype=bool)

    def block(cs, ns):
        xp.greater(v[ns, cs], 0, out=active[ns, cs])
        xp.maximum(v[ns, cs], 0, out=out[ns, cs])

    parallel_blocks(xp, v.shape[1], len(v), v.size, block)
    return out, active


def relu_backward_threads(xp, delta, active, need):
    if not need[0] or delta.size < PARALLEL_MIN_SIZE:
        return relu_backward(xp, delta, active, need)
    dx = xp.empty_like(delta)
    parallel_blocks(xp, delta.shape[1], len(delta), delta.size,
                    lambda cs, ns: xp.multiply(delta[ns, cs], active[ns, cs], out=dx[ns, cs]))
    return (dx,)


relu.kernel("numpy", relu_forward_threads, relu_backward_threads)


def leaky_relu_forward(xp, v, slope=0.01):
    """``phi(v) = v`` for ``v > 0``, ``slope * v`` otherwise."""
    active = v > 0
    return xp.where(active, v, slope * v), (active, slope)             # x = phi(v), Eq. (1)


def leaky_relu_backward(xp, delta, cache, need):
    active, slope = cache
    return (xp.where(active, delta, slope * delta) if need[0] else None,)   # phi'(v) * delta, Eq. (2)


leaky_relu = Op("leaky_relu", ("v",), leaky_relu_forward, leaky_relu_backward)


def sigmoid_forward(xp, v):
    """``phi(v) = 1 / (1 + exp(-v))``, computed as ``(1 + tanh(v / 2)) / 2`` (no overflow);
    ``phi'(v) = phi(v) (1 - phi(v))``."""
    y = 0.5 * (1 + xp.tanh(0.5 * v))                                   # x = phi(v), Eq. (1)
    return y, y


def sigmoid_backward(xp, delta, y, need):
    return (delta * y * (1 - y) if need[0] else None,)                 # phi'(v) * delta, Eq. (2)


sigmoid = Op("sigmoid", ("v",), sigmoid_forward, sigmoid_backward)


def tanh_forward(xp, v):
    """``phi(v) = tanh(v)``, ``phi'(v) = 1 - tanh(v)^2``."""
    y = xp.tanh(v)                                                     # x = phi(v), Eq. (1)
    return y, y


def tanh_backward(xp, delta, y, need):
    return (delta * (1 - y * y) if need[0] else None,)                 # phi'(v) * delta, Eq. (2)


tanh = Op("tanh", ("v",), tanh_forward, tanh_backward)


@relu.rule("torch")
def relu_torch(v):
    import torch
    return torch.relu(v)


@relu.rule("jax")
def relu_jax(v):
    import jax.numpy as jnp
    return jnp.where(v > 0, v, 0)            # derivative 0 at 0, as the engine's and PyTorch's


@leaky_relu.rule("torch")
def leaky_relu_torch(v, slope=0.01):
    import torch.nn.functional as F
    return F.leaky_relu(v, slope)


@leaky_relu.rule("jax")
def leaky_relu_jax(v, slope=0.01):
    import jax.numpy as jnp
    return jnp.where(v > 0, v, slope * v)


@sigmoid.rule("torch")
def sigmoid_torch(v):
    import torch
    return torch.sigmoid(v)


@sigmoid.rule("jax")
def sigmoid_jax(v):
    import jax
    return jax.nn.sigmoid(v)


@tanh.rule("torch")
def tanh_torch(v):
    import torch
    return torch.tanh(v)


@tanh.rule("jax")
def tanh_jax(v):
    import jax.numpy as jnp
    return jnp.tanh(v)


@relu.imports("ReLU")
@sigmoid.imports("Sigmoid")
@tanh.imports("Tanh")
@leaky_relu.imports("LeakyReLU")
def activation_from_torch(imp, m, path, where):
    from .. import layers
    kind = type(m).__name__
    if kind == "LeakyReLU":
        return layers.LeakyReLU(imp.bk, m.negative_slope)
    return getattr(layers, kind)(imp.bk)
