"""Two paths, one truth: every fast kernel computes what its reference computes.

Each kernel of the registry is checked alone against its reference layer (the same weights, the
same input in the layout the fast path hands it, the same noise draws), forward and backward.
Then every zoo model is built twice from one seed -- ``kernels="reference"`` and ``"fast"`` --
and must give the same logits, loss, gradients (weights, biases, sigma, mu, batch norm),
``dL/dx``, batch-norm running statistics, parameters after three optimiser steps and, in
float64, the same FGSM / PGD adversarial images. Noise draws: dense layers draw the same ``eps``
on both paths; the fast path draws feature-map noise in the batch-innermost layout (the same
distribution in another order), so the models here are fed the reference's draws.

The CuPy kernels (feature maps stored channel-major) are checked the same way on the CuPy
stand-in (``cupy-api``: CuPy API conformance, not a GPU) against the NumPy reference.

Last, the reference layers stay readable: no file under ``manualbp/layers/`` uses the thread
pool, ``out=`` buffers, strides or buffer caches.
"""
import ast
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_normwise_close
from manualbp import get_backend
from manualbp.attacks import fgsm, pgd
from manualbp.kernels import reference_of, registry
from manualbp.layers import (BasicBlock, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GaussianNoise,
                             GlobalAvgPool2d, Linear, MaxPool2d, ReLU, SoftmaxCrossEntropy)
from manualbp.model import Sequential, evaluating, noise_layers
from manualbp.optim import SGD, Adam, is_noise_level, noise_level_optimizer
from manualbp.zoo import CNN_VARIANTS, MLP_VARIANTS, RESNET18_VARIANTS, RESNET34_VARIANTS, cnn, mlp, resnet

LAYERS = Path(__file__).resolve().parents[1] / "manualbp" / "layers"
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


def batch_innermost(x):
    """``x`` stored ``(C, H, W, N)``: the layout the fast convolution returns."""
    return np.ascontiguousarray(x.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)


def channel_major(bk, x):
    """``x`` on ``bk``'s device stored ``(C, N, H, W)``: the layout the CuPy convolution returns."""
    return bk.asarray(np.ascontiguousarray(x.transpose(1, 0, 2, 3))).transpose(1, 0, 2, 3)


# --- the registry ---------------------------------------------------------------------------------

def test_every_kernel_subclasses_its_reference():
    for backend in ("numpy", "cupy"):
        for reference, kernel in registry(backend).items():
            assert issubclass(kernel, reference) and kernel is not reference
            assert reference_of(kernel) is reference and reference_of(reference) is reference
    shared = set(registry("cupy")) & set(registry("numpy"))
    assert all(registry("cupy")[k] is registry("numpy")[k] for k in shared - {Conv2d, BatchNorm2d, MaxPool2d, GaussianNoise})


def test_backends_build_the_selected_path():
    ref, fast = pair("float64")
    assert type(Conv2d(ref, 1, 2, 3)) is Conv2d and type(Conv2d(fast, 1, 2, 3)) is registry("numpy")[Conv2d]
    layer = Conv2d(fast, 1, 2, 3)
    assert isinstance(layer, Conv2d) and layer.kind == "Conv2d"
    assert type(ReLU(fast)) is ReLU                                        # no kernel: the reference
    with pytest.raises(Exception, match="unknown kernels 'quick'"):
        get_backend("numpy", "float32", 0, "quick")


# --- each kernel alone ----------------------------------------------------------------------------

def _noisy(bk, shape, **options):
    noise = GaussianNoise(bk, shape, mode="learned", **options)
    noise.params["sigma"][...] = bk.asarray(np.random.default_rng(1).uniform(0.2, 1.5, shape))
    if "mu" in noise.params:
        noise.params["mu"][...] = bk.asarray(np.random.default_rng(2).standard_normal(shape))
    return noise


# name -> (build(bk), input shape, whether to feed the batch-innermost layout, train mode)
LAYER_CASES = {
    "linear": (lambda bk: Linear(bk, 7, 5), (6, 7), False, True),
    "linear-noise": (lambda bk: Linear(bk, 7, 5, noise=_noisy(bk, (5,), learn_mean=True)), (6, 7), False, True),
    "noise-abs-sigma": (lambda bk: _noisy(bk, (3, 4, 5), abs_sigma=True), (6, 3, 4, 5), True, True),
    "conv": (lambda bk: Conv2d(bk, 3, 4, 3, 1, 1), (5, 3, 6, 7), False, True),
    "conv-strided-nobias": (lambda bk: Conv2d(bk, 3, 4, (3, 2), 2, (1, 0), bias=False), (5, 3, 9, 8), True, True),
    "conv-oblong-rows-padded": (lambda bk: Conv2d(bk, 3, 2, (2, 3), 1, (1, 0)), (4, 3, 5, 6), True, True),
    "conv-padding-kernel-less-one": (lambda bk: Conv2d(bk, 3, 3, 3, 1, 2), (4, 3, 5, 5), True, True),
    "conv-many-outputs": (lambda bk: Conv2d(bk, 1, 3, 3, 1, 1), (4, 1, 5, 5), True, True),
    "conv-padding-past-kernel": (lambda bk: Conv2d(bk, 2, 3, 2, 1, (2, 1), bias=False), (4, 2, 4, 5), False, True),
    "conv-1x1": (lambda bk: Conv2d(bk, 3, 2, 1), (4, 3, 5, 5), True, True),
    "conv-noise": (lambda bk: Conv2d(bk, 2, 3, 3, 1, 1, bias=False, noise=_noisy(bk, (3, 6, 6), learn_mean=True)),
                   (4, 2, 6, 6), True, True),
    "maxpool-2x2": (lambda bk: MaxPool2d(bk, 2), (4, 3, 6, 8), True, True),
    "maxpool-2x2-cropped": (lambda bk: MaxPool2d(bk, 2), (4, 3, 7, 9), True, True),
    "maxpool-3x3-s2": (lambda bk: MaxPool2d(bk, 3, 2), (4, 3, 7, 9), True, True),
    "maxpool-2x2-padded": (lambda bk: MaxPool2d(bk, 2, 2, 1), (4, 3, 7, 8), True, True),
    "global-avg-pool": (lambda bk: GlobalAvgPool2d(bk), (4, 3, 5, 5), True, True),
    "flatten": (lambda bk: Flatten(bk), (4, 3, 5, 5), True, True),
    "batchnorm2d-train": (lambda bk: BatchNorm2d(bk, 3), (4, 3, 5, 5), True, True),
    "batchnorm2d-eval": (lambda bk: BatchNorm2d(bk, 3), (4, 3, 5, 5), True, False),
    "batchnorm1d-train": (lambda bk: BatchNorm1d(bk, 6), (5, 6), False, True),
    "batchnorm1d-eval": (lambda bk: BatchNorm1d(bk, 6), (5, 6), False, False),
    "basic-block": (lambda bk: BasicBlock(bk, 3, 3), (4, 3, 6, 6), True, True),
    "basic-block-projection": (lambda bk: BasicBlock(bk, 3, 4, 2, noise=_noisy(bk, (4, 3, 3))), (4, 3, 6, 6), True, True),
    "relu-maxpool-chain": (lambda bk: Sequential(bk, [("act", ReLU(bk)), ("pool", MaxPool2d(bk, 2))]),
                           (4, 3, 6, 6), True, True),
    "relu": (lambda bk: ReLU(bk), (4, 3, 5, 5), True, True),
}


def _run_layer(bk, build, x, delta, training, eps=None, state=None):
    layer = build(bk)
    if state is not None:                                     # the reference's initial weights
        layer.load_state_dict(state)
    initial = {k: host(v) for k, v in layer.state_dict().items()}
    for name, buffer in layer.buffers.items():                # non-trivial running statistics
        buffer[...] = bk.asarray(np.random.default_rng(3).uniform(0.5, 1.5, buffer.shape))
    layer.train() if training else layer.eval()
    noise = {n: m for n, m in layer.modules() if isinstance(m, GaussianNoise)}
    for n, m in noise.items():
        if eps is not None:
            m.eps, m.hold_eps = bk.asarray(eps[n]), True
    out = layer.forward(x)
    dx = layer.backward(bk.asarray(delta))
    return (host(out), host(dx), {k: host(g) for k, g in layer.named_gradients().items()},
            {k: host(b) for k, b in layer.named_buffers().items()}, {n: host(m.eps) for n, m in noise.items()},
            initial)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_kernel_alone_equals_its_reference(case, dtype, backend_name):
    build, shape, innermost, training = LAYER_CASES[case]
    ref_bk, fast_bk = pair(dtype, seed=4, fast=backend_name)
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(dtype)
    if "pool" in case:
        x = np.round(x)                                           # ties in the windows
    fast_layer = build(get_backend(backend_name, dtype, 0, "fast"))
    if type(fast_layer) is reference_of(type(fast_layer)):
        pytest.skip(f"no {backend_name} kernel for {case}")
    ref_out = build(get_backend("numpy", dtype, 0, "reference")).forward(x)
    delta = rng.standard_normal(ref_out.shape).astype(dtype)
    ref = _run_layer(ref_bk, build, x, delta, training)
    if not innermost:
        fast_x = fast_bk.asarray(x)
    elif backend_name == "numpy":
        fast_x = batch_innermost(x)
    else:
        fast_x = channel_major(fast_bk, x)
    fast = _run_layer(fast_bk, build, fast_x, delta, training, eps=ref[4], state=ref[5])
    for what, a, b in (("output", fast[0], ref[0]), ("dL/dx", fast[1], ref[1])):
        assert_close(a, b, dtype, f"{case} {what}")
    assert fast[2].keys() == ref[2].keys() and fast[3].keys() == ref[3].keys()
    for kind, f, r in (("gradient", fast[2], ref[2]), ("buffer", fast[3], ref[3])):
        for k in r:
            assert_close(f[k], r[k], dtype, f"{case} {kind} {k}")


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
    results = []
    for bk in pair(dtype):
        model = mlp(bk, "mlpn", "relu", sizes=(5, 4, 3, 2))
        opt = make(model)
        assert (type(opt) is not reference_of(type(opt))) == (bk.kernels == "fast")
        if bk.kernels == "fast":                 # the per-parameter path exactly when the names say so
            assert (opt.span is None) == all(n.endswith(".weight") for n in opt.names)
        rng = np.random.default_rng(6)
        for _ in range(3):
            for name, module, key in model.parameter_slots():
                module.grads[key] = bk.asarray(rng.standard_normal(module.grads[key].shape))
            opt.step()
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
            module.grads[key] = bk.xp.zeros_like(module.grads[key])
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
        value = loss.forward(model.forward(bk.asarray(x)), bk.asarray(y, dtype="int64"))
        dx = model.backward(loss.backward())
        seen.append({"logits": host(loss.p), "loss": float(value), "dL/dx": host(dx),
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


def _assert_fast_equals_reference(name, dtype, fast):
    build = ZOO[name]
    x, y = _batch(build(get_backend("numpy", dtype, 0, "reference")))
    ref_bk, fast_bk = pair(dtype, seed=8, fast=fast)
    _, ref_seen, ref_final = _train_steps(ref_bk, build, x, y, 3)
    initial = {k: host(v) for k, v in build(get_backend("numpy", dtype, 8, "reference")).state_dict().items()}
    fast_model, fast_seen, fast_final = _train_steps(fast_bk, build, x, y, 3, [s["eps"] for s in ref_seen], initial)
    assert any(type(m) is not reference_of(type(m)) for _, m in fast_model.modules())
    for step, (f, r) in enumerate(zip(fast_seen, ref_seen)):
        assert f.keys() == r.keys()
        for k in r:
            if k != "eps" and not k.startswith("grad "):
                assert_close(f[k], r[k], dtype, f"{name} step {step + 1}: {k}")
        assert_close(_together(f, "grad "), _together(r, "grad "), dtype, f"{name} step {step + 1}: gradients")
    assert fast_final.keys() == ref_final.keys()
    params = set(fast_model.named_parameters())
    for k in set(ref_final) - params:
        assert_close(fast_final[k], ref_final[k], dtype, f"{name} after 3 steps: {k}")
    assert_close(_together({k: fast_final[k] for k in params}, ""), _together({k: ref_final[k] for k in params}, ""),
                 dtype, f"{name} after 3 steps: parameters")


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


# --- the reference layers stay readable -----------------------------------------------------------

FORBIDDEN_NAMES = {"parallel_blocks", "run_all", "strides", "empty_like", "flags"}


@pytest.mark.parametrize("path", sorted(LAYERS.glob("*.py")), ids=lambda p: p.name)
def test_reference_layers_have_no_speed_devices(path):
    """No thread pool, no ``out=`` writes, no stride or layout inspection, no buffer caches
    (attributes named ``_something`` holding arrays between calls) in ``manualbp/layers/``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None) or ""
            names = [a.name for a in node.names]
            assert "parallel" not in module and "kernels" not in module and "parallel" not in names, \
                f"{path.name}:{node.lineno} imports {module or names}"
        if isinstance(node, ast.keyword):
            assert node.arg != "out", f"{path.name}:{node.lineno} writes through out="
        if isinstance(node, (ast.Attribute, ast.Name)):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            assert name not in FORBIDDEN_NAMES, f"{path.name}:{node.lineno} uses {name}"
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            assert not (isinstance(node.value, ast.Name) and node.value.id == "self"
                        and node.attr.startswith("_")), f"{path.name}:{node.lineno} caches self.{node.attr}"
