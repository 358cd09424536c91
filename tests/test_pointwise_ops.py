"""The point-wise ops: the activations hardtanh (ReLU6), hardswish, hardsigmoid, silu and gelu
(erf to float64 round-off, without SciPy), the broadcasting add, sub and mul, scale (a number
times and plus an array), mean and total over axes -- each against finite differences, PyTorch
and JAX (at the kinks: PyTorch's derivative there), its trace rules against ATen, its refusals,
float32 kept, and CuPy API conformance."""
import numpy as np
import pytest
from opcheck import check_op, check_rule

from manualbp import get_backend
from manualbp.gradcheck import relative_error
from manualbp.ops import relu
from manualbp.ops.activations import erf, gelu, hardsigmoid, hardswish, hardtanh, leaky_relu, sigmoid, silu, tanh
from manualbp.ops.base import Op
from manualbp.ops.elementwise import add, mean, mul, scale, sub, total
from manualbp.verify.walk import ConversionError

SHAPES = [(5,), (3, 4), (2, 3, 4, 5)]
#: op, settings, the kinks of its derivative
ACTIVATIONS = [(hardtanh, {}, (-1.0, 1.0)), (hardtanh, {"min_value": 0.0, "max_value": 6.0}, (0.0, 6.0)),
               (hardtanh, {"min_value": -2.5, "max_value": 0.5}, (-2.5, 0.5)), (hardswish, {}, (-3.0, 3.0)),
               (hardsigmoid, {}, (-3.0, 3.0)), (silu, {}, ()), (gelu, {}, ()), (gelu, {"approximate": "tanh"}, ())]
ACTIVATION_IDS = ["hardtanh", "relu6", "hardtanh_-2.5_0.5", "hardswish", "hardsigmoid", "silu", "gelu", "gelu_tanh"]


def away_from(kinks, shape, seed=0):
    """Normal draws times 4, each at least 0.01 from every kink (finite differences hold)."""
    v = 4 * np.random.default_rng(seed).standard_normal(shape)
    for k in kinks:
        v = np.where(abs(v - k) < 0.01, k + 0.05, v)
    return v


# --- activations ----------------------------------------------------------------------------------

@pytest.mark.parametrize("op,settings,kinks", ACTIVATIONS, ids=ACTIVATION_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_activations(op, settings, kinks, shape):
    check_op(op, [away_from(kinks, shape)], settings)


@pytest.mark.parametrize("op,settings,kinks", ACTIVATIONS, ids=ACTIVATION_IDS)
def test_activations_at_their_kinks_take_pytorchs_derivative(op, settings, kinks):
    """Inputs exactly at the kinks (and at 0, -3, 3, 6): PyTorch's and JAX's autograd agree with
    the hand-written derivative there (finite differences straddle a kink, so they are off)."""
    v = np.array([*kinks, 0.0, -3.0, 3.0, 6.0, -6.0, 0.25, -0.25])
    check_op(op, [v], settings, fd=False)


def test_kink_derivatives_are_pytorchs_values():
    """``phi'`` at the kinks, written out: hardtanh 0 at its bounds (ReLU6 at 0 and 6), hardswish
    0 at -3 and 1 at 3, hardsigmoid 0 at -3 and 3."""
    bk = get_backend("numpy", "float64", 0, "reference")
    v = np.array([-3.0, -1.0, 0.0, 1.0, 3.0, 6.0])

    def slope(op, **settings):
        _, cache = op.forward(bk.xp, v, **settings)
        return op.backward(bk.xp, np.ones_like(v), cache, (True,))[0]

    np.testing.assert_array_equal(slope(hardtanh), [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(slope(hardtanh, min_value=0.0, max_value=6.0), [0, 0, 0, 1, 1, 0])
    np.testing.assert_allclose(slope(hardswish), [0, 1 / 6, 0.5, 5 / 6, 1, 1], rtol=1e-15)
    np.testing.assert_allclose(slope(hardsigmoid), [0, 1 / 6, 1 / 6, 1 / 6, 0, 0], rtol=1e-15)


def test_pytorchs_hardsigmoid_backward_rounds_one_sixth_to_float32(torch):
    """Why the torch rule of hardsigmoid is ``relu6(v + 3) / 6``: ``F.hardsigmoid``'s float64
    derivative is 1/6 rounded to float32, 3e-8 off the exact one that the engine computes."""
    v = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    torch.nn.functional.hardsigmoid(v).backward()
    assert v.grad.item() == float(np.float32(1 / 6)) != 1 / 6


def test_relu_fast_kernel_takes_a_large_array_without_channels():
    """Traced graphs apply relu to any shape: a 1-D array past the thread pool's size runs the
    reference (the blocks split a channel axis)."""
    from manualbp.parallel import PARALLEL_MIN_SIZE
    v = np.random.default_rng(10).standard_normal(PARALLEL_MIN_SIZE + 1)
    forward, backward = relu.kernels["numpy"]
    out, active = forward(np, v)
    np.testing.assert_array_equal(out, np.maximum(v, 0))
    np.testing.assert_array_equal(backward(np, v, active, (True,))[0], v * (v > 0))


def test_erf_is_accurate_to_float64_round_off():
    special = pytest.importorskip("scipy.special")
    x = np.concatenate([np.linspace(-10, 10, 200_001), [0.46875, -0.46875, 4.0, -4.0, 6.0, -6.0, 1e-300, -1e-12]])
    ours, theirs = erf(np, x), special.erf(x)
    assert (abs(ours - theirs) <= 1e-14 * abs(theirs)).all()
    np.testing.assert_array_equal(erf(np, np.array([0.0, np.inf, -np.inf, 30.0])), [0.0, 1.0, -1.0, 1.0])


def test_gelu_refuses_an_unknown_approximation():
    with pytest.raises(ValueError, match="approximate must be 'none' or 'tanh'"):
        gelu.forward(np, np.zeros(3), approximate="sigmoid")


# --- broadcasting arithmetic ----------------------------------------------------------------------

#: (shape of a, shape of b) pairs: equal, per-channel gates, positional terms, a row, a scalar
BROADCASTS = [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (2, 3, 1, 1)), ((3, 1, 1), (2, 3, 4, 5)),
              ((2, 6, 4), (1, 6, 4)), ((2, 6, 4), (4,)), ((3, 1), (1, 5)), ((2, 3), ())]


@pytest.mark.parametrize("op", [add, sub, mul], ids=lambda op: op.name)
@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
def test_broadcasting_arithmetic(op, shapes):
    rng = np.random.default_rng(1)
    check_op(op, [rng.standard_normal(s) for s in shapes])


def test_add_of_equal_shapes_hands_delta_on_unchanged():
    """The cheap path: no sum, ``delta`` itself for both summands."""
    a = np.ones((2, 3))
    out, cache = add.forward(np, a, a)
    delta = np.arange(6.0).reshape(2, 3)
    da, db = add.backward(np, delta, cache, (True, True))
    assert da is delta and db is delta


@pytest.mark.parametrize("settings", [{"factor": -2.5, "offset": 0.75}, {"factor": 0.5}, {"offset": -3.0}], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scale(settings, shape):
    check_op(scale, [np.random.default_rng(2).standard_normal(shape)], settings)


@pytest.mark.parametrize("op", [mean, total], ids=lambda op: op.name)
@pytest.mark.parametrize("shape,axes", [((2, 3, 4, 5), (2, 3)), ((2, 3, 4, 5), (0, 1, 2, 3)), ((2, 6, 4), (1,)),
                                        ((3, 4), (0,)), ((2, 3, 4, 5), (1, 3))], ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions(op, shape, axes, keepdims):
    check_op(op, [np.random.default_rng(3).standard_normal(shape)], {"axes": axes, "keepdims": keepdims})


def test_a_wrong_backward_is_caught():
    """``mul`` with its backward's gradients not summed back over the broadcast axes' entries
    (the first one's only): ``check_op`` names the input."""
    def first_entry_only(xp, delta, cache, need):
        a, _ = cache
        return mul.backward(xp, delta, cache, need)[0], (delta * a)[:, :, :1, :1]

    wrong = Op("wrong_mul", ("a", "b"), mul.forward, first_entry_only)
    wrong.rules.update(mul.rules)
    rng = np.random.default_rng(4)
    with pytest.raises(AssertionError, match="d/db off finite differences"):
        check_op(wrong, [rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 1, 1))])


# --- float32 ---------------------------------------------------------------------------------------

FLOAT32_CASES = [(op, [(2, 3, 4)], settings) for op, settings, _ in ACTIVATIONS] + [
    (add, [(2, 3, 4), (2, 3, 4)], {}), (add, [(2, 3, 4), (3, 1)], {}), (sub, [(2, 3, 4), (3, 4)], {}), (mul, [(3, 1), (2, 3, 4)], {}),
    (scale, [(2, 3, 4)], {"factor": 1.5, "offset": -0.5}), (mean, [(2, 3, 4)], {"axes": (1, 2)}),
    (total, [(2, 3, 4)], {"axes": (0,), "keepdims": True})]
FLOAT32_IDS = ACTIVATION_IDS + ["add", "add_broadcast", "sub", "mul", "scale", "mean", "total"]


def run_pair(bk, op, shapes, settings):
    """Forward and backward of ``op`` on ``bk`` (random inputs of ``shapes``): host arrays."""
    rng = np.random.default_rng(5)
    xs = [bk.asarray(3 * rng.standard_normal(s)) for s in shapes]
    forward, backward = bk.kernel(op)
    out, cache = forward(bk.xp, *xs, **settings)
    grads = backward(bk.xp, bk.asarray(rng.standard_normal(out.shape)), cache, (True,) * len(xs))
    return bk.to_host(out), [bk.to_host(g) for g in grads]


@pytest.mark.parametrize("op,shapes,settings", FLOAT32_CASES, ids=FLOAT32_IDS)
@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_float32_stays_float32(op, shapes, settings, kernels):
    out, grads = run_pair(get_backend("numpy", "float32", 0, kernels), op, shapes, settings)
    assert out.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)
    out64, grads64 = run_pair(get_backend("numpy", "float64", 0, kernels), op, shapes, settings)
    np.testing.assert_allclose(out, out64, rtol=1e-5, atol=1e-5)
    for g, g64 in zip(grads, grads64):
        np.testing.assert_allclose(g, g64, rtol=1e-5, atol=1e-5)


@pytest.mark.cupy_api
@pytest.mark.parametrize("op,shapes,settings", FLOAT32_CASES, ids=FLOAT32_IDS)
def test_cupy_api_conformance(op, shapes, settings, cupy_standin):
    """CuPy API conformance (the stand-in, not a GPU): each op, fast and reference, runs on
    CuPy's API alone and computes what it computes on NumPy."""
    expected_out, expected_grads = run_pair(get_backend("numpy", "float64", 0, "reference"), op, shapes, settings)
    for kernels in ("fast", "reference"):
        out, grads = run_pair(get_backend("cupy", "float64", 0, kernels), op, shapes, settings)
        np.testing.assert_allclose(out, expected_out, rtol=1e-13, atol=1e-15)
        for g, e in zip(grads, expected_grads):
            np.testing.assert_allclose(g, e, rtol=1e-13, atol=1e-15)


# --- trace rules -----------------------------------------------------------------------------------

def x(*shape, seed=6):
    return 4 * np.random.default_rng(seed).standard_normal(shape)


AT_KINKS = np.array([-6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0, 0.5])


@pytest.mark.parametrize("name,args,kwargs", [
    ("aten.relu.default", (x(2, 3, 4),), {}), ("aten.relu_.default", (x(2, 3),), {}),
    ("aten.sigmoid.default", (x(2, 3),), {}), ("aten.sigmoid_.default", (x(5,),), {}),
    ("aten.tanh.default", (x(2, 3),), {}), ("aten.tanh_.default", (x(5,),), {}),
    ("aten.leaky_relu.default", (x(2, 3),), {}), ("aten.leaky_relu.default", (x(2, 3), 0.2), {}),
    ("aten.leaky_relu_.default", (x(2, 3),), {"negative_slope": 0.1}),
    ("aten.hardtanh.default", (x(2, 3, 4),), {}), ("aten.hardtanh.default", (AT_KINKS, 0.0, 6.0), {}),
    ("aten.hardtanh_.default", (x(2, 3),), {"min_val": -2, "max_val": 2}), ("aten.relu6.default", (AT_KINKS,), {}),
    ("aten.hardswish.default", (AT_KINKS,), {}), ("aten.hardswish_.default", (x(2, 3, 4),), {}),
    ("aten.hardsigmoid.default", (AT_KINKS,), {}), ("aten.hardsigmoid_.default", (x(2, 3),), {}),
    ("aten.silu.default", (x(2, 3, 4),), {}), ("aten.silu_.default", (x(2, 3),), {}),
    ("aten.gelu.default", (x(2, 3, 4),), {}), ("aten.gelu.default", (x(2, 3),), {"approximate": "tanh"}),
    ("aten.gelu_.default", (x(2, 3),), {"approximate": "none"}),
], ids=lambda a: a if isinstance(a, str) else "")
def test_activation_trace_rules(name, args, kwargs):
    check_rule(name, *args, **kwargs)


@pytest.mark.parametrize("name,args,kwargs", [
    ("aten.add.Tensor", (x(2, 3, 4, 5), x(2, 3, 4, 5, seed=7)), {}),
    ("aten.add.Tensor", (x(2, 6, 4), x(1, 6, 4, seed=7)), {}),
    ("aten.add_.Tensor", (x(2, 3, 4, 5), x(3, 1, 1, seed=7)), {}),
    ("aten.add.Tensor", (x(2, 3), 2.5), {}), ("aten.add.Tensor", (x(2, 3), 2), {"alpha": 3}),
    ("aten.add_.Tensor", (x(2, 3), -1.0), {}),
    ("aten.sub.Tensor", (x(2, 3, 4, 5), x(2, 3, 1, 1, seed=7)), {}), ("aten.sub.Tensor", (x(2, 3), 1.5), {}),
    ("aten.sub_.Tensor", (x(2, 3), 2), {"alpha": 2}),
    ("aten.mul.Tensor", (x(2, 3, 4, 5), x(2, 3, 1, 1, seed=7)), {}),
    ("aten.mul.Tensor", (x(3, 1, 1), x(2, 3, 4, 5, seed=7)), {}), ("aten.mul_.Tensor", (x(2, 3), 0.5), {}),
    ("aten.mul.Tensor", (x(2, 3), -2), {}),
    ("aten.div.Tensor", (x(2, 3), 8.0), {}), ("aten.div.Tensor", (x(2, 3), 3), {}),
    ("aten.div_.Tensor", (x(2, 3), -0.5), {}),
    ("aten.rsub.Scalar", (x(2, 3), 1.0), {}), ("aten.rsub.Scalar", (x(2, 3), 2), {"alpha": 3}),
    ("aten.mean.dim", (x(2, 3, 4, 5), [-1, -2], True), {}), ("aten.mean.dim", (x(2, 3, 4, 5), [2, 3]), {}),
    ("aten.mean.dim", (x(2, 6, 4), [1]), {}), ("aten.mean.dim", (x(2, 6, 4), -1), {}),
    ("aten.mean.dim", (x(2, 3), None), {}), ("aten.mean.dim", (x(2, 3), []), {"keepdim": True}),
    ("aten.mean.default", (x(2, 3, 4),), {}),
    ("aten.sum.dim_IntList", (x(2, 3, 4, 5), [2, 3], True), {}), ("aten.sum.dim_IntList", (x(2, 6, 4), [-1]), {}),
    ("aten.sum.dim_IntList", (x(2, 3), None), {}), ("aten.sum.default", (x(2, 3, 4),), {}),
], ids=lambda a: a if isinstance(a, str) else "")
def test_arithmetic_trace_rules(name, args, kwargs):
    check_rule(name, *args, **kwargs)


def test_a_number_operand_becomes_a_scale_node():
    """``x + 2``, ``x * 3``, ``x - 1``: a node of the ``scale`` op; ``x * 1``, ``x + 0``, ``x / 1``:
    ``x`` itself."""
    from manualbp.verify.trace import Call, Value
    call, v = Call(get_backend("numpy", "float64", 0), "test"), Value("v", (2, 3))
    for rule, args, kwargs, factor, offset in ((add.tracers["aten.add.Tensor"], (v, 2), {"alpha": 3}, 1.0, 6.0),
                                               (mul.tracers["aten.mul.Tensor"], (v, 3), {}, 3.0, 0.0),
                                               (sub.tracers["aten.sub.Tensor"], (v, 1), {}, 1.0, -1.0)):
        assert rule(call, *args, **kwargs) == (scale, [v], {"factor": factor, "offset": offset})
    assert add.tracers["aten.add.Tensor"](call, v, 0) is v
    assert mul.tracers["aten.mul.Tensor"](call, v, 1.0) is v
    assert scale.tracers["aten.div.Tensor"](call, v, 1) is v


@pytest.mark.parametrize("name,args,kwargs,words", [
    ("aten.add.Tensor", ((2, 3), (2, 3)), {"alpha": 2}, "alpha=2 with two tensors; expected alpha=1"),
    ("aten.add_.Tensor", ((2, 3), (1, 3)), {"alpha": 0.5}, "alpha=0.5 with two tensors"),
    ("aten.sub.Tensor", ((2, 3), (2, 3)), {"alpha": -1}, "alpha=-1 with two tensors"),
    ("aten.div.Tensor", ((2, 3), (2, 3)), {}, "a tensor divisor; expected a Python number"),
    ("aten.div.Tensor", ((2, 3), 0), {}, "division by zero"),
    ("aten.mean.dim", ((2, 3), [1]), {"dtype": "float32"}, "dtype=float32; expected none"),
    ("aten.mean.default", ((2, 3),), {"dtype": "float32"}, "dtype=float32"),
    ("aten.sum.dim_IntList", ((2, 3), [1]), {"dtype": "float32"}, "dtype=float32"),
    ("aten.gelu.default", ((2, 3),), {"approximate": "erf"}, "approximate='erf'; expected 'none' or 'tanh'"),
], ids=lambda a: a if isinstance(a, str) else "")
def test_refusals(name, args, kwargs, words):
    from manualbp.ops import OPS
    from manualbp.verify.trace import Call, Value
    rule = next(op.tracers[name] for op in OPS if name in op.tracers)
    values = [Value(f"t{i}", a) if isinstance(a, tuple) else a for i, a in enumerate(args)]
    with pytest.raises(ConversionError, match=f"cannot import test call: {words}"):
        rule(Call(get_backend("numpy", "float64", 0), "test call"), *values, **kwargs)


def test_existing_activations_keep_their_trace_rules():
    assert {"aten.relu.default", "aten.relu_.default"} <= set(relu.tracers)
    for op, name in ((sigmoid, "sigmoid"), (tanh, "tanh"), (leaky_relu, "leaky_relu")):
        assert {f"aten.{name}.default", f"aten.{name}_.default"} <= set(op.tracers)


# --- PyTorch modules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make,name,settings", [
    (lambda nn: nn.ReLU6(), "hardtanh", {"min_value": 0.0, "max_value": 6.0}),
    (lambda nn: nn.Hardtanh(-0.5, 2), "hardtanh", {"min_value": -0.5, "max_value": 2.0}),
    (lambda nn: nn.Hardswish(), "hardswish", {}), (lambda nn: nn.Hardsigmoid(), "hardsigmoid", {}),
    (lambda nn: nn.SiLU(), "silu", {}), (lambda nn: nn.GELU(), "gelu", {"approximate": "none"}),
    (lambda nn: nn.GELU("tanh"), "gelu", {"approximate": "tanh"}),
], ids=["ReLU6", "Hardtanh", "Hardswish", "Hardsigmoid", "SiLU", "GELU", "GELU_tanh"])
def test_pytorch_activation_modules_are_traced(torch, make, name, settings):
    """The module traces to one node of its op with its settings; its forward and hand-written
    backward match the torch module and autograd (the kinks included; through Hardsigmoid, whose
    float64 derivative PyTorch rounds to float32, to 1e-7)."""
    from manualbp.layers import Apply
    from manualbp.verify import from_torch
    m = make(torch.nn)
    model = from_torch(m, (5,), batch=4)
    (node,) = [n for _, n in model.modules() if isinstance(n, Apply)]
    assert node.op.name == name and node.settings(True) == settings
    v = np.concatenate([AT_KINKS, x(12)]).reshape(4, 5)
    delta = np.random.default_rng(9).standard_normal(v.shape)
    ours = model.forward(model.bk.asarray(v)), model.backward(model.bk.asarray(delta))
    vt = torch.tensor(v, requires_grad=True)
    out = m(vt)
    out.backward(torch.tensor(delta))
    assert relative_error(ours[0], out.detach().numpy()) < 1e-13
    assert relative_error(ours[1], vt.grad.numpy()) < (1e-7 if name == "hardsigmoid" else 1e-13)
