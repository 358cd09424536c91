"""The ops that move values (:mod:`manualbp.ops.shape`): each op's reference backward against
finite differences and its PyTorch and JAX rules, and each trace rule against the ATen op it
imports."""
import numpy as np
import pytest
from opcheck import check_op, check_rule

from manualbp import get_backend
from manualbp.ops.shape import cat, expand, pad, permute, reshape, roll, take
from manualbp.verify.trace import Call, Value
from manualbp.verify.walk import ConversionError

BIG = 9223372036854775807          # ATen's "to the end" slice bound


def rand(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def trace(op, aten_name, *args, **kwargs):
    """What ``op``'s trace rule for ``aten_name`` returns for a call with these arguments."""
    return op.tracers[aten_name](Call(get_backend("numpy", "float64", 0, "reference"), aten_name), *args, **kwargs)


# --- the ops --------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, target", [((2, 3, 4), (-1, 12)), ((2, 6), (2, 3, 2)), ((4, 1, 3), (-1, 3)),
                                           ((3, 4), (12,))])
def test_reshape(shape, target):
    out, _ = check_op(reshape, [rand(*shape)], {"shape": target})
    assert out.size == np.prod(shape)


@pytest.mark.parametrize("shape, axes", [((2, 3), (1, 0)), ((2, 3, 4, 5), (0, 2, 3, 1)), ((2, 3, 4), (2, 0, 1))])
def test_permute(shape, axes):
    out, _ = check_op(permute, [rand(*shape)], {"axes": axes})
    assert out.shape == tuple(shape[a] for a in axes)


@pytest.mark.parametrize("shape, key", [((3, 4), (1,)), ((2, 5, 3), ((None, None, None), (1, 4, 2))),
                                        ((2, 5, 3), ((None, None, None), 2, (0, None, 1))),
                                        ((4, 3), (2, 1))])
def test_take(shape, key):
    check_op(take, [rand(*shape)], {"key": key})


@pytest.mark.parametrize("shapes, axis", [([(2, 3), (2, 1), (2, 4)], 1), ([(1, 3, 2), (2, 3, 2)], 0),
                                          ([(2, 3, 1), (2, 3, 2)], 2)])
def test_cat(shapes, axis):
    out, grads = check_op(cat, [rand(*s, seed=i) for i, s in enumerate(shapes)], {"axis": axis})
    assert len(grads) == len(shapes) and [g.shape for g in grads] == [tuple(s) for s in shapes]


@pytest.mark.parametrize("shape, pads, value", [((2, 3, 4), ((0, 0), (1, 1), (2, 0)), 0.0),
                                                ((2, 2, 3, 3), ((0, 0), (0, 0), (1, 2), (0, 1)), -1.5)])
def test_pad(shape, pads, value):
    out, _ = check_op(pad, [rand(*shape)], {"pads": pads, "value": value})
    assert out.shape == tuple(n + a + b for n, (a, b) in zip(shape, pads))


@pytest.mark.parametrize("shape, shifts, axes", [((5,), (2,), (0,)), ((2, 3, 4), (1, -3), (1, 2)),
                                                 ((3, 4), (5, 1), (0, 1))])
def test_roll(shape, shifts, axes):
    check_op(roll, [rand(*shape)], {"shifts": shifts, "axes": axes})


@pytest.mark.parametrize("shape, target", [((1, 1, 3), (4, -1, -1)), ((2, 1, 3), (-1, 4, -1)),
                                           ((3, 1), (2, 3, 5)), ((3,), (2, 4, -1))])
def test_expand(shape, target):
    out, grads = check_op(expand, [rand(*shape)], {"shape": target})
    assert grads[0].shape == shape


def test_a_wrong_backward_is_caught(monkeypatch):
    """A roll whose backward rolls ``delta`` forward again (not back) fails the check."""
    monkeypatch.setattr(roll, "backward",
                        lambda xp, delta, cache, need: (xp.roll(delta, cache[0], axis=cache[1]),))
    with pytest.raises(AssertionError, match="roll: d/dx off finite differences"):
        check_op(roll, [rand(2, 5)], {"shifts": (1,), "axes": (1,)})


def test_float32_stays_float32():
    bk = get_backend("numpy", "float32", 0, "reference")
    x = rand(2, 1, 3).astype(np.float32)
    for op, settings in ((reshape, {"shape": (-1, 3)}), (permute, {"axes": (2, 0, 1)}),
                         (take, {"key": ((None, None, None), 0)}),
                         (pad, {"pads": ((0, 0), (1, 1), (0, 2)), "value": 0.0}),
                         (roll, {"shifts": (1,), "axes": (2,)}), (expand, {"shape": (4, -1, 2, -1)})):
        out, cache = op.forward(bk.xp, x, **settings)
        assert out.dtype == np.float32, op.name
        assert op.backward(bk.xp, np.ones_like(out), cache, (True,))[0].dtype == np.float32, op.name
    out, cache = cat.forward(bk.xp, x, x, axis=1)
    assert out.dtype == np.float32 and cat.backward(bk.xp, out, cache, (True, None))[1] is None


# --- the trace rules ------------------------------------------------------------------------------

def test_trace_rules_take_the_aten_arguments_by_their_names():
    """Each rule's parameters after ``call`` are the ATen schema's (a call may pass any by name)."""
    import inspect

    import torch
    for op in (reshape, permute, take, cat, pad, roll, expand):
        for aten_name, rule in op.tracers.items():
            _, packet, overload = aten_name.split(".")
            schema = getattr(getattr(torch.ops.aten, packet), overload)._schema
            expected = [a.name for a in schema.arguments][1:]
            assert list(inspect.signature(rule).parameters)[2:] == expected, aten_name
    x = rand(2, 3, 4)
    check_rule("aten.reshape.default", x, shape=[-1, 12])
    check_rule("aten.swapdims.default", x, dim0=0, dim1=2)
    check_rule("aten.slice.Tensor", x, dim=1, start=1, end=BIG, step=2)
    check_rule("aten.pad.default", x, [1, 1], mode="constant", value=0.5)


def test_reshape_rules():
    x = rand(2, 3, 4)
    check_rule("aten.view.default", x, [2, -1])
    check_rule("aten.view.default", x, [-1, 4])
    check_rule("aten.reshape.default", x, [6, 4])
    check_rule("aten._unsafe_view.default", x, [2, 12])
    check_rule("aten.flatten.using_ints", x, 1)
    check_rule("aten.flatten.using_ints", x)
    check_rule("aten.flatten.using_ints", rand(2, 3, 4, 5), 1, -2)
    check_rule("aten.unflatten.int", rand(2, 6), 1, [2, 3])
    check_rule("aten.unflatten.int", rand(2, 6, 2), -2, [-1, 3])
    check_rule("aten.squeeze.dim", rand(2, 3, 1), -1)
    check_rule("aten.squeeze.dim", x, 1)                               # not of size 1: unchanged
    check_rule("aten.squeeze.dims", rand(2, 1, 3, 1), [1, -1])
    check_rule("aten.squeeze.default", rand(2, 1, 3, 1))
    check_rule("aten.unsqueeze.default", x, -1)
    check_rule("aten.unsqueeze.default", x, 1)
    check_rule("aten.unsqueeze.default", x, 0)


def test_reshape_rules_keep_the_batch_free():
    x = Value("x", (8, 3, 4))
    assert trace(reshape, "aten.view.default", x, [8, -1])[1] == {"shape": (-1, 12)}
    assert trace(reshape, "aten.flatten.using_ints", x, 1)[1] == {"shape": (-1, 12)}
    assert trace(reshape, "aten.flatten.using_ints", x)[1] == {"shape": (96,)}
    assert trace(reshape, "aten.unsqueeze.default", x, 0)[1] == {"shape": (1, 8, 3, 4)}
    assert trace(reshape, "aten.squeeze.dim", x, 1) is x
    out, _ = reshape.forward(np, rand(5, 3, 4), shape=(-1, 12))       # another batch size
    assert out.shape == (5, 12)


def test_permute_rules():
    x = rand(2, 3, 4, 5)
    check_rule("aten.permute.default", x, [0, 2, 3, 1])
    check_rule("aten.permute.default", x, [0, -1, 1, 2])
    check_rule("aten.transpose.int", x, 1, 2)
    check_rule("aten.transpose.int", x, -1, 0)
    check_rule("aten.swapaxes.default", x, 1, -1)
    check_rule("aten.swapdims.default", x, 0, 2)
    check_rule("aten.t.default", rand(3, 4))
    check_rule("aten.t.default", rand(3))
    v = Value("x", (2, 3))
    assert trace(permute, "aten.permute.default", v, [0, 1]) is v
    assert trace(permute, "aten.t.default", v)[1] == {"axes": (1, 0)}


def test_take_rules():
    x = rand(2, 5, 3)
    check_rule("aten.select.int", x, 1, 0)
    check_rule("aten.select.int", x, 1, -1)
    check_rule("aten.select.int", x, -1, 2)
    check_rule("aten.slice.Tensor", x, 1, 0, BIG, 2)
    check_rule("aten.slice.Tensor", x, 1, 1, BIG)
    check_rule("aten.slice.Tensor", x, 2, -2)
    check_rule("aten.slice.Tensor", x, 1, 1, -1)
    check_rule("aten.slice.Tensor", x, 0, 0, BIG)
    check_rule("aten.slice.Tensor", x, 1, 4, 2)                        # empty
    check_rule("aten.narrow.default", x, 1, 1, 3)
    check_rule("aten.narrow.default", x, -1, -2, 2)
    v = Value("x", (2, 5, 3))
    assert trace(take, "aten.slice.Tensor", v, 0, 0, BIG) is v
    assert trace(take, "aten.slice.Tensor", v, 1, 1, BIG)[1] == {"key": ((None, None, None), (1, None, 1))}
    assert trace(take, "aten.select.int", v, 1, -1)[1] == {"key": ((None, None, None), 4)}


def test_multi_output_take_rules():
    x = rand(2, 7, 3)
    assert len(check_rule("aten.chunk.default", x, 2, 1)) == 2
    assert len(check_rule("aten.chunk.default", rand(2, 5), 4, 1)) == 3        # sizes 2, 2, 1: fewer chunks
    check_rule("aten.chunk.default", x, 3, -1)
    check_rule("aten.chunk.default", x, 1)
    assert len(check_rule("aten.split.Tensor", x, 3, 1)) == 3
    check_rule("aten.split.Tensor", x, 2)
    check_rule("aten.split.Tensor", x, 10, 1)
    check_rule("aten.split_with_sizes.default", x, [2, 4, 1], 1)
    check_rule("aten.split_with_sizes.default", x, [1, 2], -1)
    assert len(check_rule("aten.unbind.int", x, 1)) == 7
    check_rule("aten.unbind.int", x)
    v = Value("x", (2, 4))
    assert trace(take, "aten.split.Tensor", v, 4, 1) == [v]


def test_cat_rules():
    a, b, c = rand(2, 3, 4, seed=0), rand(2, 1, 4, seed=1), rand(2, 5, 4, seed=2)
    check_rule("aten.cat.default", [a, b, c], 1)
    check_rule("aten.cat.default", [a, rand(2, 3, 2), rand(2, 3, 1)], -1)
    check_rule("aten.cat.default", [a, rand(1, 3, 4)])
    check_rule("aten.cat.default", [a])
    values = [Value("a", (2, 3)), Value("b", (2, 1))]
    assert trace(cat, "aten.cat.default", values, -1) == (values, {"axis": 1})


def test_pad_rules():
    x = rand(2, 3, 4, 5)
    check_rule("aten.pad.default", x, [1, 1, 2, 0])
    check_rule("aten.pad.default", x, [0, 2], "constant", 0.5)
    check_rule("aten.constant_pad_nd.default", x, [1, 1, 2, 0])
    check_rule("aten.constant_pad_nd.default", x, [0, 1, 0, 0, 3, 0], -2.0)
    v = Value("x", (2, 3))
    assert trace(pad, "aten.pad.default", v, [1, 2]) == ((v,), {"pads": ((0, 0), (1, 2)), "value": 0.0})
    assert trace(pad, "aten.constant_pad_nd.default", v, [0, 0]) is v


def test_roll_and_expand_rules():
    x = rand(2, 3, 4)
    check_rule("aten.roll.default", x, [1, -2], [1, 2])
    check_rule("aten.roll.default", x, [5], [-1])
    d = rand(1, 1, 6)
    check_rule("aten.expand.default", d, [4, -1, -1])
    check_rule("aten.expand.default", d, [2, 4, 3, 6])
    check_rule("aten.expand.default", rand(3, 1), [3, 5])
    assert trace(expand, "aten.expand.default", Value("d", (1, 1, 6)), [4, -1, 6])[1] == {"shape": (4, -1, -1)}
    v = Value("x", (2, 3))
    assert trace(expand, "aten.expand.default", v, [2, -1]) is v


# --- what the rules refuse ------------------------------------------------------------------------

def test_refusals():
    x = Value("x", (2, 3, 4))
    with pytest.raises(ConversionError, match="padding mode 'reflect'; expected 'constant'"):
        trace(pad, "aten.pad.default", x, [1, 1], "reflect")
    with pytest.raises(ConversionError, match=r"negative padding \[-1, 1\] \(cropping\)"):
        trace(pad, "aten.pad.default", x, [-1, 1])
    with pytest.raises(ConversionError, match="negative padding"):
        trace(pad, "aten.constant_pad_nd.default", x, [0, 0, 0, -2])
    with pytest.raises(ConversionError, match="roll of the flattened tensor"):
        trace(roll, "aten.roll.default", x, [1])
