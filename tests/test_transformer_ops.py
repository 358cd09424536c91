"""The ops of a transformer block (layer_norm, softmax, matmul, attention, gather), linear on
inputs of any number of leading axes, and the trace rules of these ops and of batch_norm: each
op by :func:`opcheck.check_op` (finite differences, fast kernels, PyTorch and JAX autograd),
each trace rule by :func:`opcheck.check_rule` against torch's ATen op, and every refusal."""
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("jax")

from opcheck import check_op, check_rule  # noqa: E402

from manualbp.ops.linear import linear  # noqa: E402
from manualbp.ops.transformer import attention, gather, layer_norm, matmul, softmax  # noqa: E402
from manualbp.verify.trace import Call, Value  # noqa: E402
from manualbp.verify.walk import ConversionError  # noqa: E402


def rng(seed=0):
    return np.random.default_rng(seed)


def normal(*shape, seed=0):
    return rng(seed).standard_normal(shape)


def value(*shape, dtype="float64"):
    return Value("t", shape, dtype)


def traced(aten_name, op, *args, **kwargs):
    """What ``op``'s trace rule for ``aten_name`` makes of a call with these arguments."""
    return op.tracers[aten_name](Call(None, f"node of {aten_name}"), *args, **kwargs)


# --- layer_norm -------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, normalized_ndim", [((2, 3, 5), 1), ((2, 3, 5), 2), ((2, 3, 3, 4), 1),
                                                    ((2, 3, 3, 4), 2)])
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
def test_layer_norm(shape, normalized_ndim, affine):
    trailing = shape[len(shape) - normalized_ndim:]
    weight = 1 + 0.3 * normal(*trailing, seed=1) if affine != "none" else None
    bias = normal(*trailing, seed=2) if affine == "both" else None
    check_op(layer_norm, [normal(*shape), weight, bias], {"normalized_ndim": normalized_ndim, "floor": 1e-3})


def test_layer_norm_keeps_float32():
    x = normal(2, 4, 6).astype(np.float32)
    y, _ = layer_norm.forward(np, x, np.ones(6, np.float32), np.zeros(6, np.float32))
    assert y.dtype == np.float32


@pytest.mark.parametrize("normalized_shape, affine", [([8], True), ([4, 8], True), ([8], False)])
def test_layer_norm_rule(normalized_shape, affine):
    x = normal(2, 4, 8)
    params = (1 + normal(*normalized_shape, seed=1), normal(*normalized_shape, seed=2)) if affine else (None, None)
    check_rule("aten.layer_norm.default", x, normalized_shape, *params, 1e-3, False)
    check_rule("aten.layer_norm.default", normal(2, 4, 4, 8), normalized_shape, *params)
    x, w = value(2, 4, 8), value(*normalized_shape)
    assert traced("aten.layer_norm.default", layer_norm, x, normalized_shape, w, eps=1e-6) == (
        (x, w, None), {"normalized_ndim": len(normalized_shape), "floor": 1e-6})


# --- softmax ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, axis", [((3, 5), -1), ((3, 5), 0), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 3)])
def test_softmax(shape, axis):
    check_op(softmax, [3 * normal(*shape)], {"axis": axis})


def test_softmax_rules():
    x = normal(2, 3, 4)
    for dim in (-1, 0, 1):
        check_rule("aten.softmax.int", x, dim)
        check_rule("aten._softmax.default", x, dim, False)
    assert traced("aten.softmax.int", softmax, value(2, 3, 4), -1)[1] == {"axis": 2}
    import torch
    with pytest.raises(ConversionError, match="softmax with dtype=torch.float32; expected dtype=None"):
        traced("aten.softmax.int", softmax, value(2, 3), -1, torch.float32)
    with pytest.raises(ConversionError, match="half_to_float=True"):
        traced("aten._softmax.default", softmax, value(2, 3), -1, True)


# --- matmul -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("a_shape, b_shape", [((4, 3), (3, 5)), ((2, 3, 4, 5), (2, 3, 5, 6)),
                                              ((4, 5), (2, 5, 3)), ((2, 1, 4, 5), (3, 5, 2)),
                                              ((2, 3, 4, 5), (5, 4))])
def test_matmul(a_shape, b_shape):
    check_op(matmul, [normal(*a_shape), normal(*b_shape, seed=1)])


def test_matmul_rules():
    check_rule("aten.matmul.default", normal(2, 3, 4, 5), normal(2, 3, 5, 6, seed=1))
    check_rule("aten.matmul.default", normal(4, 5), normal(2, 5, 3, seed=1))
    check_rule("aten.bmm.default", normal(3, 4, 5), normal(3, 5, 2, seed=1))
    check_rule("aten.mm.default", normal(4, 5), normal(5, 2, seed=1))
    for a, b in (((5,), (5, 2)), ((3, 5), (5,))):
        with pytest.raises(ConversionError, match="expected both at least 2-D"):
            traced("aten.matmul.default", matmul, value(*a), value(*b))


# --- attention --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [None, 0.3])
@pytest.mark.parametrize("shapes", [((4, 3), (5, 3), (5, 2)), ((2, 3, 4, 6), (2, 3, 5, 6), (2, 3, 5, 2))])
def test_attention(scale, shapes):
    q, k, v = (normal(*s, seed=i) for i, s in enumerate(shapes))
    check_op(attention, [q, k, v], {"scale": scale})


def test_attention_scale_none_is_one_over_sqrt_e():
    q, k, v = normal(2, 4, 6), normal(2, 5, 6, seed=1), normal(2, 5, 3, seed=2)
    default, _ = attention.forward(np, q, k, v)
    explicit, _ = attention.forward(np, q, k, v, scale=1 / math.sqrt(6))
    np.testing.assert_array_equal(default, explicit)


def test_attention_rule():
    q, k, v = normal(2, 3, 4, 6), normal(2, 3, 5, 6, seed=1), normal(2, 3, 5, 2, seed=2)
    check_rule("aten.scaled_dot_product_attention.default", q, k, v)
    check_rule("aten.scaled_dot_product_attention.default", q, k, v, scale=0.25)
    name = "aten.scaled_dot_product_attention.default"
    q, k, v = value(2, 4, 6), value(2, 5, 6), value(2, 5, 3)
    assert traced(name, attention, q, k, v) == ((q, k, v), {"scale": 1 / math.sqrt(6)})
    assert traced(name, attention, q, k, v, scale=0.5)[1] == {"scale": 0.5}
    for kwargs, match in (({"attn_mask": value(4, 5)}, "expected attn_mask=None"),
                          ({"dropout_p": 0.1}, "dropout_p=0.1; expected 0"),
                          ({"is_causal": True}, "is_causal=True; expected False"),
                          ({"enable_gqa": True}, "enable_gqa=True; expected False")):
        with pytest.raises(ConversionError, match=match):
            traced(name, attention, q, k, v, **kwargs)
    with pytest.raises(ConversionError, match="expected the same leading axes"):
        traced(name, attention, value(2, 4, 6), value(1, 5, 6), value(1, 5, 6))


# --- gather -----------------------------------------------------------------------------------------
def relative_position_index(window):
    """Swin's ``(L, L)`` index, ``L = window^2``, of a ``((2 window - 1)^2, heads)`` bias table:
    every relative offset is read by many pairs of positions."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + window - 1
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def test_gather_accumulates_repeated_indices():
    index = relative_position_index(3)                                     # (9, 9), values in [0, 25)
    assert len(np.unique(index)) < index.size
    table = normal(25, 4)
    _, grads = check_op(gather, [table, index])
    assert grads[1] is None
    counts = np.bincount(index.reshape(-1), minlength=25)
    dtable, _ = gather.backward(np, np.ones((9, 9, 4)), gather.forward(np, table, index)[1], (True, None))
    np.testing.assert_array_equal(dtable, np.repeat(counts[:, None], 4, axis=1))


def test_gather_of_a_vector_table():
    check_op(gather, [normal(6), np.array([[0, 5, 5], [2, 0, -1]])])


def test_gather_rule():
    check_rule("aten.index.Tensor", normal(25, 4), [relative_position_index(3)])
    check_rule("aten.index.Tensor", normal(6, 3), [np.array([4, 0, 4], dtype=np.int32)])
    for indices, match in (([None, value(3, dtype="int64")], "indexing by 2 index entries"),
                           ([value(3, dtype="int64"), value(3, dtype="int64")], "indexing by 2 index entries"),
                           ([None], "indexing by 1 index entries"),
                           ([value(6, dtype="bool")], "indexing by a bool tensor"),
                           ([value(6, dtype="uint8")], "indexing by a uint8 tensor")):
        with pytest.raises(ConversionError, match=match):
            traced("aten.index.Tensor", gather, value(6, 3), indices)


# --- linear on any number of leading axes ------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3), (2, 4, 3), (2, 3, 2, 3), (3,)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_leading_axes(shape, bias):
    check_op(linear, [normal(*shape), normal(5, 3, seed=1), normal(5, seed=2) if bias else None])


def test_linear_fast_writes_parameter_gradients_in_place():
    x, weight, bias = normal(2, 3, 4), normal(5, 4, seed=1), normal(5, seed=2)
    delta = normal(2, 3, 5, seed=3)
    forward, backward = linear.kernels["numpy"]
    out, cache = forward(np, x, weight, bias)
    dw, db = np.empty_like(weight), np.empty_like(bias)
    grads = backward(np, delta, cache, (True, dw, db))
    assert grads[1] is dw and grads[2] is db
    np.testing.assert_allclose(dw, np.einsum("nlo,nli->oi", delta, x), rtol=1e-12)
    np.testing.assert_allclose(db, delta.sum(axis=(0, 1)), rtol=1e-12)
    np.testing.assert_allclose(grads[0], delta @ weight, rtol=1e-12)


def test_linear_rule():
    x, weight, bias = normal(2, 3, 4), normal(5, 4, seed=1), normal(5, seed=2)
    check_rule("aten.linear.default", x, weight, bias)
    check_rule("aten.linear.default", x, weight)
    check_rule("aten.linear.default", normal(6, 4), weight, bias)


# --- batch_norm's trace rule ------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_rule(shape, training):
    x, weight, bias = normal(*shape), 1 + normal(3, seed=1), normal(3, seed=2)
    running_mean, running_var = normal(3, seed=3), 1 + rng(4).random(3)
    check_rule("aten.batch_norm.default", x, weight, bias, running_mean.copy(), running_var.copy(), training,
               0.1, 1e-3, False)


def test_batch_norm_rule_refusals():
    from manualbp.ops.norm import batch_norm
    name = "aten.batch_norm.default"
    x, c = value(4, 3, 2, 2), value(3)
    assert traced(name, batch_norm, x, c, c, c, c, True, 0.2, 1e-3, False)[1] == {
        "training": True, "momentum": 0.2, "floor": 1e-3}
    for args, match in (((value(4, 3, 5), c, c, c, c, True, 0.1), "3-D input; expected"),
                        ((x, None, c, c, c, True, 0.1), "affine=False"),
                        ((x, c, None, c, c, True, 0.1), "affine=False"),
                        ((x, c, c, None, None, True, 0.1), "track_running_stats=False"),
                        ((x, c, c, c, c, True, None), "momentum=None")):
        with pytest.raises(ConversionError, match=match):
            traced(name, batch_norm, *args, 1e-5, False)


# --- check_op catches a wrong backward --------------------------------------------------------------
def test_check_op_catches_a_wrong_backward(monkeypatch):
    def forgetful_backward(xp, delta, cache, need):
        """layer_norm's backward without the ``- xhat * mean(dxhat * xhat)`` term."""
        xhat, inv_std, weight, normalized_ndim = cache
        dxhat = delta * weight
        return inv_std * (dxhat - dxhat.mean(axis=-1, keepdims=True)), (delta * xhat).sum(axis=0), delta.sum(axis=0)

    monkeypatch.setattr(layer_norm, "backward", forgetful_backward)
    with pytest.raises(AssertionError, match="layer_norm: d/dx off finite differences"):
        check_op(layer_norm, [normal(4, 5), 1 + normal(5, seed=1), normal(5, seed=2)])
