"""``linear``: the weighted sum of Eq. (1) for every neuron of a dense layer, and its backward."""
from .base import Op, destination, filled


def linear_forward(xp, x, weight, bias):
    """``v = x theta^T + b``: ``x`` ``(N, in)``, ``weight`` (theta) ``(out, in)``, ``bias``
    ``(out,)`` or ``None`` -> ``v`` ``(N, out)``."""
    v = x @ weight.T                                   # sum_j theta_ij x_j, Eq. (1)
    if bias is not None:
        v = v + bias                                   # theta_i0 * x_0, x_0 = 1, Eq. (1)
    return v, (x, weight)


def linear_backward(xp, delta, cache, need):
    """``delta = dL/dv`` ``(N, out)`` -> ``(dL/dx, dL/dweight, dL/dbias)``."""
    x, weight = cache
    dx = delta @ weight if need[0] else None           # sum_j theta_ji delta_j, Eq. (2)
    dw = delta.T @ x if need[1] is not None else None  # dL/dtheta_ij = delta_i x_j, beside Eq. (2)
    db = delta.sum(axis=0) if need[2] is not None else None   # dL/dtheta_i0 = delta_i
    return dx, dw, db


linear = Op("linear", ("x", "weight", "bias"), linear_forward, linear_backward)


def linear_forward_fast(xp, x, weight, bias):
    """The reference's ``v``, with the bias added in place."""
    v = x @ weight.T
    if bias is not None:
        v += bias
    return v, (x, weight)


def linear_backward_fast(xp, delta, cache, need):
    """The reference's gradients, the parameters' written into their arrays (``out=``): a step
    allocates no fresh weight-gradient array (a 300 KB array page-faults anew on every step)."""
    x, weight = cache
    dx = delta @ weight if need[0] else None
    dw = filled(need[1], xp.matmul(delta.T, x, out=destination(need[1]))) if need[1] is not None else None
    db = filled(need[2], delta.sum(axis=0, out=destination(need[2]))) if need[2] is not None else None
    return dx, dw, db


linear.kernel("numpy", linear_forward_fast, linear_backward_fast)
linear.kernel("cupy", linear_forward_fast, linear_backward_fast)


@linear.rule("torch")
def linear_torch(x, weight, bias):
    import torch.nn.functional as F
    return F.linear(x, weight, bias)


@linear.rule("jax")
def linear_jax(x, weight, bias):
    v = x @ weight.T
    return v if bias is None else v + bias


@linear.imports("Linear")
def linear_from_torch(imp, m, path, where):
    from ..layers import Linear
    layer = Linear(imp.bk, m.in_features, m.out_features, bias=m.bias is not None)
    imp.weights(layer, m, path, where)
    return layer
