"""The ops of a transformer block, as PyTorch computes them:

=================  ==============================  ==========================================
op                 inputs                          settings
=================  ==============================  ==========================================
layer_norm         ``x``, ``weight``, ``bias``     ``normalized_ndim``, ``floor`` (``eps``)
softmax            ``x``                           ``axis``
matmul             ``a``, ``b``                    --
attention          ``q``, ``k``, ``v``             ``scale``
gather             ``table``, ``index``            --
=================  ==============================  ==========================================

``layer_norm`` normalises each sample over its ``normalized_ndim`` trailing axes; ``floor`` is
PyTorch's ``eps`` (here ``eps`` is always the noise draw). ``matmul`` multiplies the matrices of
the two trailing axes, broadcasting the leading ones as NumPy does. ``attention`` is scaled
dot-product attention, ``softmax(q k^T * scale) v``. ``gather`` picks rows of a table by an
integer index array (a relative-position bias table read at every pair of positions).
"""
import math

from .base import Op


# --- layer_norm -----------------------------------------------------------------------------------
def trailing_axes(ndim, count):
    """The last ``count`` of ``ndim`` axes."""
    return tuple(range(ndim - count, ndim))


def layer_norm_forward(xp, x, weight, bias, normalized_ndim=1, floor=1e-5):
    """``y = weight * xhat + bias``, ``xhat = (x - mean) / sqrt(var + floor)``, the mean and
    (biased) variance over the ``normalized_ndim`` trailing axes of each sample; ``weight`` and
    ``bias`` (each ``None`` or of the trailing shape) default to 1 and 0."""
    axes = trailing_axes(x.ndim, normalized_ndim)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    inv_std = 1 / xp.sqrt(var + floor)
    xhat = (x - mean) * inv_std
    y = xhat if weight is None else xhat * weight
    if bias is not None:
        y = y + bias
    return y, (xhat, inv_std, weight, normalized_ndim)


def layer_norm_backward(xp, delta, cache, need):
    """``dL/dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))`` over the normalised
    axes, ``dxhat = weight * delta``; ``dL/dweight = sum delta * xhat`` and ``dL/dbias = sum
    delta`` over the leading axes."""
    xhat, inv_std, weight, normalized_ndim = cache
    axes = trailing_axes(delta.ndim, normalized_ndim)
    leading = tuple(range(delta.ndim - normalized_ndim))
    dx = None
    if need[0]:
        dxhat = delta if weight is None else delta * weight
        dx = inv_std * (dxhat - dxhat.mean(axis=axes, keepdims=True)
                        - xhat * (dxhat * xhat).mean(axis=axes, keepdims=True))
    dw = (delta * xhat).sum(axis=leading) if need[1] is not None else None
    db = delta.sum(axis=leading) if need[2] is not None else None
    return dx, dw, db


layer_norm = Op("layer_norm", ("x", "weight", "bias"), layer_norm_forward, layer_norm_backward)


@layer_norm.rule("torch")
def layer_norm_torch(x, weight, bias, normalized_ndim=1, floor=1e-5):
    import torch.nn.functional as F
    return F.layer_norm(x, x.shape[x.ndim - normalized_ndim:], weight, bias, eps=floor)


@layer_norm.rule("jax")
def layer_norm_jax(x, weight, bias, normalized_ndim=1, floor=1e-5):
    import jax.numpy as jnp
    axes = trailing_axes(x.ndim, normalized_ndim)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / jnp.sqrt(var + floor)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


@layer_norm.traces("aten.layer_norm.default")
def layer_norm_from_trace(call, input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    """``F.layer_norm(input, normalized_shape, weight, bias, eps)``."""
    return (input, weight, bias), {"normalized_ndim": len(normalized_shape), "floor": float(eps)}


# --- softmax --------------------------------------------------------------------------------------
def softmax_forward(xp, x, axis=-1):
    """``y = exp(x) / sum(exp(x), axis)``, computed from ``x - max(x)`` (no overflow)."""
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    return y, (y, axis)


def softmax_backward(xp, delta, cache, need):
    """``dL/dx = y * (delta - sum(delta * y, axis))``."""
    y, axis = cache
    return (y * (delta - (delta * y).sum(axis=axis, keepdims=True)) if need[0] else None,)


softmax = Op("softmax", ("x",), softmax_forward, softmax_backward)


@softmax.rule("torch")
def softmax_torch(x, axis=-1):
    import torch
    return torch.softmax(x, axis)


@softmax.rule("jax")
def softmax_jax(x, axis=-1):
    import jax
    return jax.nn.softmax(x, axis=axis)


@softmax.traces("aten.softmax.int")
def softmax_from_trace(call, input, dim, dtype=None):
    """``torch.softmax(input, dim)``, in the input's dtype."""
    if dtype is not None:
        call.refuse(f"softmax with dtype={dtype}; expected dtype=None (the input's)")
    return (input,), {"axis": dim % input.ndim}


@softmax.traces("aten._softmax.default")
def softmax_internal_from_trace(call, input, dim, half_to_float):
    """``aten._softmax(input, dim, half_to_float)``, in the input's dtype."""
    if half_to_float:
        call.refuse("softmax with half_to_float=True; expected the input's dtype")
    return (input,), {"axis": dim % input.ndim}


# --- matmul ---------------------------------------------------------------------------------------
def summed_to(g, shape):
    """``g`` summed over the leading axes that broadcasting added or stretched to reach ``shape``
    from an input of that shape."""
    g = g.sum(axis=tuple(range(g.ndim - len(shape))))
    return g.sum(axis=tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1), keepdims=True)


def matmul_forward(xp, a, b):
    """``a @ b``: ``a`` ``(..., L, E)``, ``b`` ``(..., E, S)`` -> ``(..., L, S)``, the leading axes
    broadcast."""
    return a @ b, (a, b)


def matmul_backward(xp, delta, cache, need):
    """``dL/da = delta @ b^T``, ``dL/db = a^T @ delta``, each summed back to its input's shape over
    the broadcast leading axes."""
    a, b = cache
    da = summed_to(delta @ xp.swapaxes(b, -1, -2), a.shape) if need[0] else None
    db = summed_to(xp.swapaxes(a, -1, -2) @ delta, b.shape) if need[1] else None
    return da, db


matmul = Op("matmul", ("a", "b"), matmul_forward, matmul_backward)


@matmul.rule("torch")
def matmul_torch(a, b):
    import torch
    return torch.matmul(a, b)


@matmul.rule("jax")
def matmul_jax(a, b):
    return a @ b


@matmul.traces("aten.matmul.default", "aten.bmm.default", "aten.mm.default")
def matmul_from_trace(call, input, other):
    """``torch.matmul`` of two operands of at least 2 axes; ``torch.bmm``; ``torch.mm``."""
    if input.ndim < 2 or other.ndim < 2:
        call.refuse(f"matmul of a {input.ndim}-D and a {other.ndim}-D operand; expected both at least 2-D")
    return (input, other), {}


# --- attention ------------------------------------------------------------------------------------
def attention_forward(xp, q, k, v, scale=None):
    """``softmax(q k^T * scale) v`` over the last axis: ``q`` ``(..., L, E)``, ``k`` ``(..., S, E)``,
    ``v`` ``(..., S, Ev)`` -> ``(..., L, Ev)``; ``scale`` ``None`` is ``1 / sqrt(E)``."""
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ xp.swapaxes(k, -1, -2)) * scale
    e = xp.exp(scores - scores.max(axis=-1, keepdims=True))
    weights = e / e.sum(axis=-1, keepdims=True)           # attention weights (..., L, S)
    return weights @ v, (q, k, v, weights, scale)


def attention_backward(xp, delta, cache, need):
    """``dL/dv = P^T delta``; ``dP = delta v^T``; ``dS = P * (dP - sum(dP * P))`` (softmax's);
    ``dL/dq = dS k * scale``, ``dL/dk = dS^T q * scale``, with ``P`` the attention weights."""
    q, k, v, weights, scale = cache
    dv = xp.swapaxes(weights, -1, -2) @ delta if need[2] else None
    dweights = delta @ xp.swapaxes(v, -1, -2)
    dscores = weights * (dweights - (dweights * weights).sum(axis=-1, keepdims=True))
    dq = (dscores @ k) * scale if need[0] else None
    dk = (xp.swapaxes(dscores, -1, -2) @ q) * scale if need[1] else None
    return dq, dk, dv


attention = Op("attention", ("q", "k", "v"), attention_forward, attention_backward)


@attention.rule("torch")
def attention_torch(q, k, v, scale=None):
    import torch.nn.functional as F
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


@attention.rule("jax")
def attention_jax(q, k, v, scale=None):
    import jax
    import jax.numpy as jnp
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return jax.nn.softmax((q @ jnp.swapaxes(k, -1, -2)) * scale, axis=-1) @ v


@attention.traces("aten.scaled_dot_product_attention.default")
def attention_from_trace(call, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False):
    """``F.scaled_dot_product_attention`` without mask, dropout or causal masking; the scale
    stored (``1 / sqrt(E)`` when ``None``)."""
    if attn_mask is not None:
        call.refuse("scaled_dot_product_attention with attn_mask; expected attn_mask=None")
    if dropout_p > 0:
        call.refuse(f"scaled_dot_product_attention with dropout_p={dropout_p}; expected 0")
    if is_causal:
        call.refuse("scaled_dot_product_attention with is_causal=True; expected False")
    if enable_gqa:
        call.refuse("scaled_dot_product_attention with enable_gqa=True; expected False")
    if not query.shape[:-2] == key.shape[:-2] == value.shape[:-2]:
        call.refuse(f"scaled_dot_product_attention of q {query.shape}, k {key.shape}, v {value.shape}; "
                    "expected the same leading axes (no broadcasting)")
    return (query, key, value), {"scale": 1 / math.sqrt(query.shape[-1]) if scale is None else float(scale)}


# --- gather ---------------------------------------------------------------------------------------
def gather_forward(xp, table, index):
    """``table[index]``: rows of ``table`` ``(K, ...)`` picked by the integer array ``index``
    -> ``index.shape + table.shape[1:]``."""
    return table[index], (table.shape, index)


def gather_backward(xp, delta, cache, need):
    """``dL/dtable``: zeros with each row of ``delta`` added at its index (a row picked several
    times gathers every contribution: ``add.at`` is unbuffered); the integer index has none."""
    shape, index = cache
    dtable = None
    if need[0]:
        dtable = xp.zeros(shape, dtype=delta.dtype)
        xp.add.at(dtable, index, delta)
    return dtable, None


gather = Op("gather", ("table", "index"), gather_forward, gather_backward)


@gather.rule("torch")
@gather.rule("jax")
def gather_rule(table, index):
    return table[index]


INDEX_DTYPES = ("int64", "int32", "int16", "int8")


@gather.traces("aten.index.Tensor")
def gather_from_trace(call, input, indices):
    """``input[index]``: one integer index tensor on the first axis."""
    if len(indices) != 1 or indices[0] is None:
        call.refuse(f"indexing by {len(indices)} index entries {list(indices)}; "
                    "expected one integer index tensor on the first axis")
    index = indices[0]
    if str(index.dtype).split(".")[-1] not in INDEX_DTYPES:
        call.refuse(f"indexing by a {index.dtype} tensor; expected an integer index tensor ({', '.join(INDEX_DTYPES)})")
    return (input, index), {}
