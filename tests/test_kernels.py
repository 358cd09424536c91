"""Two paths, one truth: every fast kernel computes what its op's reference computes.

Each fast pair an op registers (``op.kernels[backend]``, :mod:`manualbp.ops`) is checked alone
against the op's reference pair: the same inputs, handed to the kernel in the memory layouts the
fast path gives it (C order, batch innermost, channel major), the same ``delta`` in the layout of
the kernel's output; the output, every gradient and every buffer updated in place (batch norm's
running statistics) agree. The CuPy kernels use only array operations, so they run on NumPy
arrays too, and on the CuPy stand-in (``cupy-api``: CuPy API conformance, not a GPU). Each
kernel also keeps the ``need`` contract of :mod:`manualbp.ops.base`: an entry ``None`` gives
``None``, an array is filled in place and returned.

Then every zoo model is built twice from one seed -- ``kernels="reference"`` and ``"fast"`` --
and must give the same logits, loss, gradients (weights, biases, sigma, mu, batch norm),
``dL/dx``, batch-norm running statistics, parameters after three optimiser steps and, in
float64, the same FGSM / PGD adversarial images. Noise draws: dense layers draw the same ``eps``
on both paths; the fast path draws feature-map noise in the layout of the map (the same
distribution in another order), so the models here are fed the reference's draws. The
optimisers' flat path (``update_part``) is checked against their per-parameter one (``update``).
"""
import numpy as np
import pytest

from conftest import assert_normwise_close
from manualbp import get_backend
from manualbp.attacks import fgsm, pgd
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.model import evaluating, noise_layers
from manualbp.ops import (OPS, add, batch_norm, conv, conv2d, flatten, gaussian_noise, global_avg_pool2d, linear,
                          max_pool2d, relu)
from manualbp.ops.im2col_fast import in_layout_of
from manualbp.optim import SGD, Adam, is_noise_level, noise_level_optimizer
from manualbp.zoo import CNN_VARIANTS, MLP_VARIANTS, RESNET18_VARIANTS, RESNET34_VARIANTS, cnn, mlp, resnet

TOL = {"float64": 1e-12, "float32": 1e-5}


def host(a):
    """A float64 host copy of a NumPy or CuPy array."""
    return np.array(a.get() if hasattr(a, "get") else a, dtype=np.float64)


def assert_close(fast, reference, dtype, what):
    """The normwise relative error ``||fast - reference|| / ||reference||`` is at most ``TOL``."""
    assert_normwise_close(host(fast), host(reference), TOL[dtype], what)


def pair(dtype, seed=0, fast="numpy"):
    """A NumPy reference backend and a ``fast`` one with the same seed."""
    return get_backend("numpy", dtype, seed, "reference"), get_backend(fast, dtype, seed, "fast")


# --- each kernel alone ----------------------------------------------------------------------------

class Case:
    """Inputs of ``op``: ``make(rng)`` gives them as host arrays (or ``None``) in the op's order.
    ``params``: the inputs that are parameters (a module hands their gradient arrays in
    ``need``); ``fixed``: inputs that get no gradient (buffers, noise draws); the others are
    values, whose gradient is wanted. ``maps``: the feature maps, given in every layout;
    ``ties``: the inputs rounded (ties in pooling windows, zeros at ReLU's kink); ``patch``:
    ``(module, attribute, value)`` set for the case."""

    def __init__(self, op, make, settings=None, params=(), fixed=(), maps=(0,), ties=False, patch=()):
        self.op, self.make, self.settings = op, make, settings or {}
        self.params, self.fixed, self.maps, self.ties, self.patch = params, fixed, maps, ties, patch


def normal(*shape):
    return lambda rng: rng.standard_normal(shape)


def uniform(low, high, *shape):
    return lambda rng: rng.uniform(low, high, shape)


def inputs(*makers):
    """``make(rng)`` of a case: each input from its maker, ``None`` for an absent one."""
    return lambda rng: [None if m is None else m(rng) for m in makers]


def conv_case(x, weight, bias=True, stride=1, padding=0, dilation=1, groups=1, **options):
    settings = {"stride": (stride,) * 2 if isinstance(stride, int) else stride,
                "padding": (padding,) * 2 if isinstance(padding, int) else padding,
                "dilation": (dilation,) * 2 if isinstance(dilation, int) else dilation, "groups": groups}
    return Case(conv2d, inputs(normal(*x), normal(*weight), normal(weight[0]) if bias else None), settings,
                params=(1, 2), **options)


def noise_case(shape, sigma=(0.2, 1.5), mean=False, draw=True, learned=True, **settings):
    return Case(gaussian_noise, inputs(normal(*shape), uniform(*sigma, *shape[1:]),
                                       normal(*shape[1:]) if mean else None, normal(*shape) if draw else None),
                settings, params=(1, 2) if learned else (2,), fixed=(3,) if learned else (1, 3), maps=(0, 3))


def norm_case(shape, training):
    features = shape[1]
    return Case(batch_norm, inputs(normal(*shape), uniform(0.5, 1.5, features), normal(features),
                                   normal(features), uniform(0.5, 1.5, features)),
                {"training": training, "momentum": 0.1, "floor": 1e-5}, params=(1, 2), fixed=(3, 4))


def pool_case(shape, kernel, stride, padding=0, ceil_mode=False):
    return Case(max_pool2d, inputs(normal(*shape)), {"kernel_size": (kernel,) * 2, "stride": (stride,) * 2,
                                                      "padding": (padding,) * 2, "ceil_mode": ceil_mode}, ties=True)


CASES = {
    "linear": Case(linear, inputs(normal(6, 7), normal(5, 7), normal(5)), params=(1, 2)),
    "linear-nobias": Case(linear, inputs(normal(6, 7), normal(5, 7), None), params=(1, 2)),
    "conv": conv_case((5, 3, 6, 7), (4, 3, 3, 3), padding=1),
    "conv-direct-weight-gradient": conv_case((5, 3, 6, 7), (4, 3, 3, 3), padding=1,
                                             patch=((conv, "DIRECT_GRAD_SIZE", 0),)),
    "conv-strided-nobias": conv_case((5, 3, 9, 8), (4, 3, 3, 2), bias=False, stride=2, padding=(1, 0)),
    "conv-oblong-rows-padded": conv_case((4, 3, 5, 6), (2, 3, 2, 3), padding=(1, 0)),
    "conv-padding-kernel-less-one": conv_case((4, 3, 5, 5), (3, 3, 3, 3), padding=2),
    "conv-many-outputs": conv_case((4, 1, 5, 5), (3, 1, 3, 3), padding=1),
    "conv-padding-past-kernel": conv_case((4, 2, 4, 5), (3, 2, 2, 2), bias=False, padding=(2, 1)),
    "conv-1x1": conv_case((4, 3, 5, 5), (2, 3, 1, 1)),
    "conv-dilated": conv_case((4, 3, 7, 8), (4, 3, 3, 3), padding=2, dilation=2),
    "conv-grouped-strided-dilated": conv_case((4, 4, 9, 8), (6, 2, 3, 3), stride=2, padding=(2, 1), dilation=(2, 1),
                                              groups=2),
    "conv-grouped-nobias": conv_case((4, 6, 5, 6), (6, 2, 3, 3), bias=False, padding=1, groups=3),
    "conv-depthwise": conv_case((4, 4, 6, 7), (4, 1, 3, 3), padding=1, groups=4),
    "conv-depthwise-strided-nobias": conv_case((4, 4, 7, 8), (4, 1, 3, 3), bias=False, stride=2, padding=1, groups=4),
    "conv-depthwise-multiplier-dilated": conv_case((4, 3, 9, 9), (6, 1, 3, 3), padding=(2, 1), dilation=(2, 1),
                                                   groups=3),
    "noise-dense-mean": noise_case((6, 5), mean=True),
    "noise-map-mean": noise_case((6, 3, 4, 5), mean=True),
    "noise-map-abs-sigma": noise_case((6, 3, 4, 5), sigma=(-1.5, 1.5), abs_sigma=True),
    "noise-map-released": noise_case((6, 3, 4, 5), sigma=(-1.5, 1.5), abs_sigma=True, released=True),
    "noise-map-fixed": noise_case((6, 3, 4, 5), learned=False),
    "noise-map-no-draw": noise_case((6, 3, 4, 5), mean=True, draw=False),
    "noise-map-no-draw-no-mean": noise_case((6, 3, 4, 5), draw=False),
    "batchnorm2d-train": norm_case((4, 3, 5, 5), True),
    "batchnorm2d-eval": norm_case((4, 3, 5, 5), False),
    "batchnorm1d-train": norm_case((5, 6), True),
    "batchnorm1d-eval": norm_case((5, 6), False),
    "maxpool-2x2": pool_case((4, 3, 6, 8), 2, 2),
    "maxpool-2x2-cropped": pool_case((4, 3, 7, 9), 2, 2),
    "maxpool-2x2-padded": pool_case((4, 3, 7, 8), 2, 2, 1),
    "maxpool-2x2-ceil": pool_case((4, 3, 7, 9), 2, 2, ceil_mode=True),
    "maxpool-2x2-ceil-even": pool_case((4, 3, 6, 8), 2, 2, ceil_mode=True),
    "maxpool-3x3-s2-ceil-padded": pool_case((4, 3, 8, 9), 3, 2, 1, ceil_mode=True),
    "maxpool-3x3-tiled-ceil": pool_case((4, 3, 8, 7), 3, 3, ceil_mode=True),
    "maxpool-2x2-s1": pool_case((4, 3, 5, 6), 2, 1),
    "maxpool-3x3-s2": pool_case((4, 3, 7, 9), 3, 2),
    "maxpool-3x3-tiled-cropped": pool_case((4, 3, 8, 7), 3, 3),
    "global-avg-pool": Case(global_avg_pool2d, inputs(normal(4, 3, 5, 5))),
    "global-avg-pool-keepdims": Case(global_avg_pool2d, inputs(normal(4, 3, 5, 5)), {"keepdims": True}),
    "flatten": Case(flatten, inputs(normal(4, 3, 5, 5))),
    "relu": Case(relu, inputs(normal(4, 3, 5, 5)), ties=True),
    "add": Case(add, inputs(normal(4, 3, 5, 5), normal(4, 3, 5, 5)), maps=(0, 1)),
}

#: Memory layouts of a feature map ``(N, C, H, W)``: the order its axes are stored in.
LAYOUTS = {"C order": (0, 1, 2, 3), "batch innermost": (1, 2, 3, 0), "channel major": (1, 0, 2, 3)}


def laid_out(xp, a, order):
    """A copy of the host array ``a`` on ``xp``, stored with its axes in the order ``order``."""
    inverse = tuple(int(k) for k in np.argsort(order))
    return xp.array(np.ascontiguousarray(a.transpose(order))).transpose(inverse)


def case_inputs(case, dtype):
    """The host inputs of ``case`` in ``dtype``, and the layouts to hand them in."""
    values = [None if a is None else a.astype(dtype) for a in case.make(np.random.default_rng(5))]
    if case.ties:
        values = [None if a is None else np.round(a) for a in values]
    layouts = LAYOUTS if values[case.maps[0]].ndim == 4 else {"C order": (0, 1)}
    return values, layouts


def on_device(xp, case, values, order):
    """Copies of ``values`` on ``xp`` (the op may update buffers in place), the feature maps
    stored in ``order`` (``None``: C order)."""
    return [None if a is None else laid_out(xp, a, order) if order and k in case.maps else xp.array(a)
            for k, a in enumerate(values)]


def run_kernel(xp, kernel, case, values, order, delta, need):
    """``kernel``'s forward and backward on copies of ``values`` (:func:`on_device`), ``delta``
    in the layout of the output; returns ``(output, gradients, inputs after the run)``."""
    arrays = on_device(xp, case, values, order)
    forward, backward = kernel
    out, cache = forward(xp, *arrays, **case.settings)
    grads = backward(xp, in_layout_of(xp.asarray(delta), out, xp), cache, need)
    return out, grads, arrays


def output_delta(case, values, dtype):
    """A random ``delta`` of the shape of the op's output."""
    shape = case.op.forward(np, *on_device(np, case, values, None), **case.settings)[0].shape
    return np.random.default_rng(6).standard_normal(shape).astype(dtype)


def wanted(case, values):
    """The indices of the inputs whose gradient is wanted."""
    return [k for k, a in enumerate(values) if a is not None and k not in case.fixed]


def needs(case, values, xp=None, dtype=None):
    """``need`` of the op's backward: ``None`` for an input without gradient, ``True`` for a
    wanted value and, given ``xp``, an array of NaN in ``dtype`` for a wanted parameter."""
    want = wanted(case, values)
    arrays = xp is not None
    return [None if k not in want else xp.full(a.shape, np.nan, dtype=dtype) if arrays and k in case.params else True
            for k, a in enumerate(values)]


def kernels_on(case, backend_name):
    """The kernel sets of ``case``'s op run on the arrays of ``backend_name``: NumPy arrays take
    both sets (the CuPy kernels use only array operations), CuPy arrays CuPy's."""
    kernels = [b for b in (("numpy", "cupy") if backend_name == "numpy" else ("cupy",)) if b in case.op.kernels]
    if not kernels:
        pytest.skip(f"no {backend_name} kernel for {case.op.name}")
    return kernels


def test_every_kernel_has_a_case():
    fast = {op.name for op in OPS if op.kernels}
    assert fast <= {case.op.name for case in CASES.values()}, "a fast kernel without a case below"
    assert fast >= {"conv2d", "linear", "batch_norm", "gaussian_noise", "max_pool2d"}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_alone_equals_its_reference(name, dtype, backend_name, monkeypatch):
    """Output, every gradient and every input after the run (buffers updated in place), for each
    layout of the feature maps; the parameters' gradients are written into arrays of NaN."""
    case = CASES[name]
    for module, attribute, value in case.patch:
        monkeypatch.setattr(module, attribute, value)
    xp = get_backend(backend_name).xp
    values, layouts = case_inputs(case, dtype)
    delta = output_delta(case, values, dtype)
    ref = run_kernel(np, (case.op.forward, case.op.backward), case, values, None, delta, needs(case, values))
    for backend in kernels_on(case, backend_name):
        for layout, order in layouts.items():
            need = needs(case, values, xp, dtype)
            out, grads, after = run_kernel(xp, case.op.kernels[backend], case, values, order, delta, need)
            what = f"{name} ({backend} kernel, {layout})"
            assert_close(out, ref[0], dtype, f"{what} output")
            assert [g is None for g in grads] == [g is None for g in ref[1]], what
            for k, (g, r) in enumerate(zip(grads, ref[1])):
                if r is not None:
                    assert_close(g, r, dtype, f"{what} gradient of {case.op.inputs[k]}")
            for k, (a, r) in enumerate(zip(after, ref[2])):
                if r is not None:
                    assert_close(a, r, dtype, f"{what} {case.op.inputs[k]} after the run")


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_keeps_the_need_contract(name, backend_name):
    """``need[i]`` ``None``: gradient ``i`` is ``None`` (the others unchanged); ``True``: a new
    array; a parameter's gradient array: filled in place and returned itself."""
    case = CASES[name]
    xp = get_backend(backend_name).xp
    values, _ = case_inputs(case, "float64")
    want, delta = wanted(case, values), output_delta(case, values, "float64")

    def backward(kernel, need):
        return run_kernel(xp, kernel, case, values, None, delta, need)[1]

    for backend in kernels_on(case, backend_name):
        kernel, what = case.op.kernels[backend], f"{name} ({backend} kernel)"
        everything, given = needs(case, values), needs(case, values, xp, "float64")
        full = backward(kernel, everything)
        assert [k for k, g in enumerate(full) if g is not None] == want, what
        filled = backward(kernel, given)
        for k in want:
            if k in case.params:
                assert filled[k] is given[k], f"{what}: gradient of {case.op.inputs[k]} not written in place"
            assert_close(filled[k], full[k], "float64", f"{what}: gradient of {case.op.inputs[k]}")
        for k in want:
            grads = backward(kernel, [None if j == k else flag for j, flag in enumerate(everything)])
            assert grads[k] is None, f"{what}: gradient of {case.op.inputs[k]} computed though not wanted"
            for j in set(want) - {k}:
                assert_close(grads[j], full[j], "float64", f"{what}: gradient of {case.op.inputs[j]}")
        assert all(g is None for g in backward(kernel, [None] * len(values))), what


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make", [
    lambda m: Adam(m, lr=0.01, weight_decay=0.1, select=lambda n: not is_noise_level(n)),
    lambda m: noise_level_optimizer(m, lr=0.05),
    lambda m: Adam(m, lr=0.01),                                     # weights and sigma: one span
    lambda m: Adam(m, lr=0.01, select=lambda n: n.endswith(".weight")),   # not one span: per parameter
    lambda m: SGD(m, lr=0.1, momentum=0.9, weight_decay=0.05),
    lambda m: SGD(m, lr=0.1, momentum=0.0),
    lambda m: SGD(m, lr=0.1, momentum=0.9, select=lambda n: n.endswith(".weight")),
], ids=["adam", "eq7", "adam-all", "adam-weights", "sgd-momentum", "sgd", "sgd-weights"])
def test_optimiser_kernel_equals_its_reference(make, dtype):
    """The flat path (``update_part`` on the optimiser's span of the parameter store) runs with
    ``kernels="fast"`` unless the selection is not one span; the per-parameter ``update`` runs
    otherwise. Both give the same parameters and state after three steps."""
    results = []
    for bk in pair(dtype):
        model = mlp(bk, "mlpn", "relu", sizes=(5, 4, 3, 2))
        opt = make(model)
        flat = bk.kernels == "fast" and not all(n.endswith(".weight") for n in opt.names)
        paths = []
        for method in ("update", "update_part"):
            setattr(opt, method, lambda *a, run=getattr(opt, method), m=method: (paths.append(m), run(*a)))
        rng = np.random.default_rng(6)
        for _ in range(3):
            for name, module, key in model.parameter_slots():
                module.grads[key][...] = bk.asarray(rng.standard_normal(module.grads[key].shape))
            opt.step()
        assert set(paths) == {"update_part" if flat else "update"}
        results.append(({k: host(v) for k, v in model.named_parameters().items()},
                        {k: host(v) for k, v in opt.state_dict().items() if k not in ("t", "lr")}))
    (ref_params, ref_state), (fast_params, fast_state) = results
    assert fast_state.keys() == ref_state.keys()
    for k in ref_params:
        assert_close(fast_params[k], ref_params[k], dtype, f"parameter {k}")
    for k in ref_state:
        assert_close(fast_state[k], ref_state[k], dtype, f"state {k}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("make", [lambda m: Adam(m, lr=0.01), lambda m: SGD(m, lr=0.1, momentum=0.9),
                                  lambda m: Adam(m, lr=0.01, select=lambda n: n.endswith(".weight"))],
                         ids=["adam", "sgd", "adam-per-parameter"])
def test_optimiser_kernels_flush_subnormal_parameters(make, dtype):
    """A parameter left subnormal by a step is zero after the kernel's step (the reference keeps
    it: a difference below the smallest normal number); the smallest normal ones are kept."""
    tiny = np.finfo(dtype).tiny
    after = []
    for bk in pair(dtype):
        model = mlp(bk, "mlp", "relu", sizes=(5, 4, 3, 2))
        opt = make(model)                                         # zero gradients: a step of zero
        weight = model.named_parameters()["fc1.weight"]
        weight[0, :3] = bk.asarray(np.array([tiny / 4, -tiny / 4, tiny * 4], dtype=dtype))
        for _, module, key in model.parameter_slots():
            module.grads[key][...] = 0
        opt.step()
        after.append(host(weight[0, :3]))
    reference, fast = after
    assert reference[0] > 0 > reference[1] and fast[0] == fast[1] == 0
    assert fast[2] == reference[2] > tiny


# --- every zoo model ------------------------------------------------------------------------------

def _resnet(blocks, variant):
    return lambda bk: resnet(bk, variant, blocks, width=2, input_size=16)


ZOO = {**{f"{v}-{a}": (lambda bk, v=v, a=a: mlp(bk, v, a, sizes=(12, 7, 5, 3)))
          for v in MLP_VARIANTS for a in ("relu", "sigmoid")},
       **{v: (lambda bk, v=v: cnn(bk, v, input_shape=(1, 8, 8), channels=(2, 3), hidden=6, classes=3))
          for v in CNN_VARIANTS},
       **{v: _resnet((2, 2, 2, 2), v) for v in RESNET18_VARIANTS},
       **{v: _resnet((3, 4, 6, 3), v) for v in RESNET34_VARIANTS}}


def _batch(model, n=8, seed=7):
    rng = np.random.default_rng(seed)
    x = rng.random((n, *model.input_shape))
    with evaluating(model, noise=False):                      # no draws, no running statistics
        classes = model.forward(model.bk.asarray(x)).shape[1]
    return x, rng.integers(0, classes, n)


def _train_steps(bk, build, x, y, steps, feed=None, state=None):
    """``steps`` training steps (SGD with momentum on the weights, Eq. (7) on sigma); returns
    what each step saw and the final state. ``feed``: the draws of the reference run, step by
    step, given to this model's noise layers.

    The weights take SGD steps, which move them in proportion to their gradients: Adam's first
    steps are ``lr * sign(g)``, so a gradient entry that is zero up to round-off would move by
    ``+-lr`` on the two paths. The Adam kernel is proven equal to its reference on the same
    gradients above. ``state``: initial weights to load (those of the reference run)."""
    model = build(bk)
    if state is not None:
        model.load_state_dict(state)
    loss = SoftmaxCrossEntropy(bk)
    optimizers = [SGD(model, lr=0.01, momentum=0.9, weight_decay=1e-4, select=lambda n: not is_noise_level(n)),
                  noise_level_optimizer(model, lr=1e-2)]
    seen = []
    for step in range(steps):
        layers = noise_layers(model)
        for name, layer in layers.items():
            layer.hold_eps = feed is not None
            if feed is not None and name in feed[step]:
                layer.eps = bk.asarray(feed[step][name])
        logits = model.forward(bk.asarray(x))
        value = loss.forward(logits, bk.asarray(y, dtype="int64"))
        dx = model.backward(loss.backward())
        seen.append({"logits": host(logits), "loss": float(value), "dL/dx": host(dx),
                     **{f"grad {k}": host(g) for k, g in model.named_gradients().items()},
                     **{f"buffer {k}": host(b) for k, b in model.named_buffers().items()},
                     "eps": {n: host(l.eps) for n, l in layers.items() if l.eps is not None}})
        for opt in optimizers:
            if opt is not None:
                opt.step()
    final = {k: host(v) for k, v in model.state_dict().items()}
    return model, seen, final


def _together(arrays, prefix):
    """The arrays whose keys start with ``prefix``, flattened into one vector (sorted by key)."""
    return np.concatenate([arrays[k].ravel() for k in sorted(arrays) if k.startswith(prefix)] or [np.zeros(0)])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_fast_equals_reference(name, dtype):
    """Logits, loss, dL/dx, the running statistics and every gradient of three training steps,
    and every parameter and buffer after them. Gradients and parameters are compared as the
    model's whole gradient (parameter) vector: a batch-norm bias
    gradient is a sum that cancels to a small number, whose round-off is that of its terms."""
    _assert_fast_equals_reference(name, dtype, "numpy")


@pytest.mark.parametrize("name", ["mlpn-relu", "cnn-an", "cnn-mlpn", "resnet18-an", "resnet34"])
def test_cupy_kernels_in_zoo_models_equal_the_reference(name, cupy_standin):
    """The same for CuPy's kernels (channel-major feature maps), on the stand-in, in float64."""
    _assert_fast_equals_reference(name, "float64", "cupy")


def _compared(seen, final, params):
    """What a zoo run is compared by, by name: each step's logits, loss, dL/dx, buffers and
    gradients (one vector), then the buffers and the parameters (one vector) after the steps."""
    compared = {}
    for step, arrays in enumerate(seen, 1):
        compared.update({f"step {step}: {k}": v for k, v in arrays.items() if k != "eps" and not k.startswith("grad ")})
        compared[f"step {step}: gradients"] = _together(arrays, "grad ")
    compared.update({f"after the steps: {k}": v for k, v in final.items() if k not in params})
    compared["after the steps: parameters"] = _together({k: final[k] for k in params}, "")
    return compared


def _error(ours, reference):
    ours, reference = np.asarray(ours), np.asarray(reference)
    return np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), np.finfo(np.float64).tiny)


def _assert_fast_equals_reference(name, dtype, fast):
    """Both paths agree within ``TOL``; in float32, a deep model's round-off grows past it
    (ResNet34's ``dL/dx`` after three steps: about 1e-5 on both paths), so a quantity may also
    differ by up to twice the float32 reference's own error against the float64 reference."""
    build = ZOO[name]
    x, y = _batch(build(get_backend("numpy", dtype, 0, "reference")))
    ref_bk, fast_bk = pair(dtype, seed=8, fast=fast)
    ref_model, ref_seen, ref_final = _train_steps(ref_bk, build, x, y, 3)
    initial = {k: host(v) for k, v in build(get_backend("numpy", dtype, 8, "reference")).state_dict().items()}
    feed = [s["eps"] for s in ref_seen]
    fast_model, fast_seen, fast_final = _train_steps(fast_bk, build, x, y, 3, feed, initial)
    assert [type(m) for _, m in fast_model.modules()] == [type(m) for _, m in ref_model.modules()]
    assert any(m.op is not None and fast in m.op.kernels for _, m in fast_model.modules()), "no fast kernel ran"
    assert [s.keys() for s in fast_seen] == [s.keys() for s in ref_seen] and fast_final.keys() == ref_final.keys()
    params = set(fast_model.named_parameters())
    ours, reference = _compared(fast_seen, fast_final, params), _compared(ref_seen, ref_final, params)
    exact = None
    if dtype == "float32":
        _, exact_seen, exact_final = _train_steps(get_backend("numpy", "float64", 8, "reference"), build, x, y, 3,
                                                  feed, initial)
        exact = _compared(exact_seen, exact_final, params)
    for what, value in reference.items():
        tol = TOL[dtype] if exact is None else max(TOL[dtype], 2 * _error(value, exact[what]))
        assert_normwise_close(ours[what], value, tol, f"{name} {what}")


@pytest.mark.parametrize("name", [n for n in ZOO if n.startswith("mlp")])
def test_dense_models_draw_the_same_noise_on_both_paths(name):
    """Without held draws the MLP family's runs are identical: ``--kernels`` does not change them."""
    ref_bk, fast_bk = pair("float32", seed=9)
    x, y = _batch(ZOO[name](get_backend("numpy", "float32", 0)))
    _, ref_seen, ref_final = _train_steps(ref_bk, ZOO[name], x, y, 2)
    _, fast_seen, fast_final = _train_steps(fast_bk, ZOO[name], x, y, 2)
    for f, r in zip(fast_seen, ref_seen):
        assert f["eps"].keys() == r["eps"].keys()
        for k in r["eps"]:
            np.testing.assert_array_equal(f["eps"][k], r["eps"][k])
        assert_close(f["logits"], r["logits"], "float32", name)
    for k in ref_final:
        assert_close(fast_final[k], ref_final[k], "float32", f"{name}: {k}")


def _adversarial_images(name, dtype):
    """``[(FGSM images, PGD-5 images)]`` of the mean model (noise off), reference then fast."""
    images = []
    for bk in pair(dtype, seed=10):
        model = ZOO[name](bk)
        x, y = _batch(model, n=6, seed=11)
        x, y = bk.asarray(x), bk.asarray(y, dtype="int64")
        with evaluating(model, noise=False):
            images.append((host(fgsm(model, x, y, 0.1)), host(pgd(model, x, y, 0.1, 0.03, 5))))
    return images


@pytest.mark.parametrize("name", ["mlpn-relu", "cnn-an", "resnet18-an", "resnet34"])
def test_adversarial_images_agree_in_float64(name):
    """FGSM and PGD-5 images of the mean model (noise off) are the same on both paths."""
    (ref_fgsm, ref_pgd), (fast_fgsm, fast_pgd) = _adversarial_images(name, "float64")
    np.testing.assert_array_equal(fast_fgsm, ref_fgsm)
    np.testing.assert_allclose(fast_pgd, ref_pgd, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["mlpn-relu", "cnn-an", "resnet18-an"])
def test_adversarial_images_rarely_differ_in_float32(name):
    """In float32 a different summation order may flip the sign of an input-gradient entry that
    is zero up to round-off: such pixels are counted, and stay rare."""
    for ref, fast in zip(*_adversarial_images(name, "float32")):
        differ = np.abs(fast - ref) > 1e-6
        assert differ.mean() <= 0.005, f"{name}: {differ.sum()} of {differ.size} pixels differ"
