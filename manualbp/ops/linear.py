"""``linear``: the weighted sum of Eq. (1) for every neuron of a dense layer, and its backward.
The input may have any number of leading axes, ``(..., in) -> (..., out)``, as PyTorch's
``F.linear``: every leading position is one more sample of Eq. (1)."""
from .base import Op, destination, filled


def linear_forward(xp, x, weight, bias):
    """``v = x theta^T + b``: ``x`` ``(..., in)``, ``weight`` (theta) ``(out, in)``, ``bias``
    ``(out,)`` or ``None`` -> ``v`` ``(..., out)``."""
    v = x @ weight.T                                   # sum_j theta_ij x_j, Eq. (1)
    if bias is not None:
        v = v + bias                                   # theta_i0 * x_0, x_0 = 1, Eq. (1)
    return v, (x, weight)


def linear_backward(xp, delta, cache, need):
    """``delta = dL/dv`` ``(..., out)`` -> ``(dL/dx, dL/dweight, dL/dbias)``, the parameters'
    summed over every leading position (the rows of ``delta`` and ``x`` made 2-D)."""
    x, weight = cache
    dx = delta @ weight if need[0] else None           # sum_j theta_ji delta_j, Eq. (2)
    rows, x_rows = delta.reshape(-1, delta.shape[-1]), x.reshape(-1, x.shape[-1])
    dw = rows.T @ x_rows if need[1] is not None else None     # dL/dtheta_ij = sum delta_i x_j, beside Eq. (2)
    db = rows.sum(axis=0) if need[2] is not None else None    # dL/dtheta_i0 = sum delta_i
    return dx, dw, db


linear = Op("linear", ("x", "weight", "bias"), linear_forward, linear_backward)


def linear_forward_fast(xp, x, weight, bias):
    """The reference's ``v``, as one 2-D matrix product over all leading positions (not one per
    leading index), with the bias added in place."""
    x_rows = x.reshape(-1, x.shape[-1])
    v = x_rows @ weight.T
    if bias is not None:
        v += bias
    return v.reshape(x.shape[:-1] + (weight.shape[0],)), (x_rows, weight)


def linear_backward_fast(xp, delta, cache, need):
    """The reference's gradients, the parameters' written into their arrays (``out=``): a step
    allocates no fresh weight-gradient array (a 300 KB array page-faults anew on every step)."""
    x_rows, weight = cache
    rows = delta.reshape(-1, delta.shape[-1])
    dx = (rows @ weight).reshape(delta.shape[:-1] + (weight.shape[1],)) if need[0] else None
    dw = filled(need[1], xp.matmul(rows.T, x_rows, out=destination(need[1]))) if need[1] is not None else None
    db = filled(need[2], rows.sum(axis=0, out=destination(need[2]))) if need[2] is not None else None
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


@linear.traces("aten.linear.default")
def linear_from_trace(call, input, weight, bias=None):
    """``F.linear(input, weight, bias)``: ``input`` ``(..., in)``."""
    return (input, weight, bias), {}
