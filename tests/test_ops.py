"""One op, one place: each op (:mod:`manualbp.ops`) is a reference pair with its fast kernels
registered beside it, the backend's table says which pair runs, and the module that runs it is
the class that was built.

* the table names, for every op, the fast pair registered for the backend with
  ``kernels="fast"`` (where there is one) and the reference pair with ``"reference"``, and the
  modules of a model run exactly what it names;
* every layer, block, model and optimiser is of the class it was built as, on every backend and
  kernel setting;
* a module's parameters, gradients and buffers are changed in place only;
* the reference stays readable: the reference layers and each op's reference functions (with the
  helpers they call) use no thread pool, no ``out=`` buffers, no strides or memory layouts.
"""
import ast
import inspect
import textwrap
from pathlib import Path

import numpy as np
import pytest

from manualbp import get_backend
from manualbp.layers import (Add, AdaptiveAvgPool2d, AvgPool2d, BasicBlock, BatchNorm1d, BatchNorm2d, Conv2d, Dropout,
                             Flatten, GaussianNoise, GlobalAvgPool2d, Graph, LeakyReLU, Linear, MaxPool2d, Normalize,
                             Projection, ReLU, Sequential, Sigmoid, SoftmaxCrossEntropy, Tanh)
from manualbp.ops import OPS, batch_norm, conv2d, gaussian_noise, global_avg_pool2d, linear, max_pool2d, relu
from manualbp.optim import SGD, Adam
from manualbp.zoo import cnn, mlp, resnet

LAYERS = Path(__file__).resolve().parents[1] / "manualbp" / "layers"


def qualified(function):
    return f"{function.__module__}.{function.__qualname__}"


# --- the table ------------------------------------------------------------------------------------

def test_the_table_names_the_pair_that_runs(backend_name):
    fast = get_backend(backend_name, "float32", 0, "fast")
    reference = get_backend(backend_name, "float32", 0, "reference")
    assert list(fast.table()) == list(reference.table()) == [op.name for op in OPS]
    for op in OPS:
        assert reference.kernel(op) == (op.forward, op.backward)
        assert reference.table()[op.name] == (qualified(op.forward), qualified(op.backward))
        expected = op.kernels.get(fast.name, (op.forward, op.backward))
        assert fast.kernel(op) == expected
        assert fast.table()[op.name] == tuple(map(qualified, expected))
    layout = "batch_inner" if backend_name == "numpy" else "channel_major"
    assert fast.table()["conv2d"] == (f"manualbp.ops.conv.conv_forward_{layout}",
                                      f"manualbp.ops.conv.conv_backward_{layout}")
    assert reference.table()["conv2d"] == ("manualbp.ops.conv.conv_forward", "manualbp.ops.conv.conv_backward")


def test_fast_kernels_live_beside_their_op():
    """Every fast function is defined in its op's file; a missing half is the reference's."""
    assert {"numpy", "cupy"} >= {backend for op in OPS for backend in op.kernels}
    for op in OPS:
        for backend, functions in op.kernels.items():
            assert all(f.__module__ == op.forward.__module__ for f in functions), (op, backend)
    assert global_avg_pool2d.kernels["numpy"][0] is global_avg_pool2d.forward
    assert linear.kernels["numpy"] == linear.kernels["cupy"] != (linear.forward, linear.backward)
    with pytest.raises(ValueError, match="unknown framework 'tensorflow'"):
        relu.rule("tensorflow")


@pytest.mark.parametrize("kernels", ["fast", "reference"])
def test_modules_run_what_the_table_names(backend_name, kernels, monkeypatch):
    """Each op's pairs replaced by recording wrappers: a training step of a CNN and of a ResNet
    calls, for every op it runs, the functions the table names -- no other."""
    bk = get_backend(backend_name, "float64", 0, kernels)
    table, calls = bk.table(), set()

    def recording(op, half, function):
        def call(*args, **kwargs):
            calls.add((op.name, half, qualified(function)))
            return function(*args, **kwargs)
        return call

    for op in OPS:
        monkeypatch.setattr(op, "forward", recording(op, 0, op.forward))
        monkeypatch.setattr(op, "backward", recording(op, 1, op.backward))
        for backend, pair in list(op.kernels.items()):
            monkeypatch.setitem(op.kernels, backend, tuple(recording(op, h, f) for h, f in enumerate(pair)))
    loss = SoftmaxCrossEntropy(bk)
    rng = np.random.default_rng(0)
    for model in (cnn(bk, "cnn-an", input_shape=(1, 8, 8), channels=(2, 3), hidden=4, classes=3),
                  resnet(bk, "resnet10-an", (1, 1, 1, 1), width=2, input_size=16)):
        x = bk.asarray(rng.random((2, *model.input_shape)))
        loss.forward(model.forward(x), bk.asarray(np.array([0, 2]), dtype="int64"))
        model.backward(loss.backward())
    ran = {name for name, _, _ in calls}
    assert {"conv2d", "batch_norm", "relu", "max_pool2d", "flatten", "linear", "gaussian_noise", "add",
            "global_avg_pool2d", "softmax_cross_entropy"} <= ran
    assert calls == {(name, half, table[name][half]) for name in ran for half in (0, 1)}


# --- the class you build is the class that runs ---------------------------------------------------

def test_the_class_built_is_the_class_that_runs(bk64):
    noise = GaussianNoise(bk64, (3,))
    built = {Linear: Linear(bk64, 4, 3, noise=noise), Conv2d: Conv2d(bk64, 2, 3, 3),
             BatchNorm1d: BatchNorm1d(bk64, 3), BatchNorm2d: BatchNorm2d(bk64, 3), MaxPool2d: MaxPool2d(bk64, 2),
             AvgPool2d: AvgPool2d(bk64, 2), GlobalAvgPool2d: GlobalAvgPool2d(bk64),
             AdaptiveAvgPool2d: AdaptiveAvgPool2d(bk64), Flatten: Flatten(bk64), ReLU: ReLU(bk64),
             LeakyReLU: LeakyReLU(bk64), Sigmoid: Sigmoid(bk64), Tanh: Tanh(bk64), GaussianNoise: noise,
             Dropout: Dropout(bk64), Normalize: Normalize(bk64, [0.5], [0.2]), Add: Add(bk64),
             BasicBlock: BasicBlock(bk64, 2, 3, 2), Projection: Projection(bk64, 2, 3, 2),
             Graph: Graph(bk64, [("relu", ReLU(bk64), "input")])}
    model = mlp(bk64, "mlpn", "relu", sizes=(4, 3, 2))
    built.update({Sequential: model, Adam: Adam(model), SGD: SGD(model)})
    for cls, thing in built.items():
        assert type(thing) is cls, f"{cls.__name__} built as {type(thing).__name__}"
    assert [type(m) for _, m in built[BasicBlock].modules()] == [
        BasicBlock, Conv2d, BatchNorm2d, ReLU, Conv2d, BatchNorm2d, Projection, Conv2d, BatchNorm2d, Add, ReLU]


# --- arrays are changed in place only -------------------------------------------------------------

def test_parameters_gradients_and_buffers_are_changed_in_place_only(bk64):
    layer, norm = Linear(bk64, 3, 2), BatchNorm1d(bk64, 2)
    for arrays, key in ((layer.params, "weight"), (layer.grads, "weight"), (norm.buffers, "running_mean")):
        before = arrays[key]
        with pytest.raises(ValueError, match=f"{key!r} is already registered: change it in place"):
            arrays[key] = bk64.xp.zeros_like(before)
        assert arrays[key] is before
        arrays[key] = before                                   # the array itself: nothing replaced
    store = layer.parameter_store()                            # parameters become views of the store
    with pytest.raises(ValueError, match="already registered"):
        layer.params["weight"] = bk64.zeros((2, 3))
    layer.params["weight"][...] = bk64.asarray(np.arange(6.0).reshape(2, 3))
    np.testing.assert_array_equal(bk64.to_host(store.param[:6]), np.arange(6.0))


# --- the reference stays readable -----------------------------------------------------------------

#: names that inspect or keep memory layouts, run the thread pool or the fast im2col
FORBIDDEN_NAMES = {"parallel_blocks", "run_all", "strides", "empty_like", "flags", "as_strided", "im2col_fast"}
#: modules of the fast paths
FAST_MODULES = {"manualbp.parallel", "manualbp.ops.im2col_fast"}


def speed_devices(tree, where):
    """Every use in the syntax tree ``tree`` of the thread pool, a fast module, an ``out=``
    buffer, strides or memory layouts, as ``"where:line what"``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = getattr(node, "module", None) or ""
            names = [a.name for a in node.names]
            if any(part in module or part in names for part in ("parallel", "im2col_fast")):
                found.append(f"{where}:{node.lineno} imports {module or names}")
        if isinstance(node, ast.keyword) and node.arg == "out":
            found.append(f"{where}:{node.lineno} writes through out=")
        if isinstance(node, (ast.Attribute, ast.Name)):
            name = node.attr if isinstance(node, ast.Attribute) else node.id
            if name in FORBIDDEN_NAMES:
                found.append(f"{where}:{node.lineno} uses {name}")
    return found


@pytest.mark.parametrize("path", sorted(LAYERS.glob("*.py")), ids=lambda p: p.name)
def test_reference_layers_have_no_speed_devices(path):
    """No thread pool, no ``out=`` writes, no stride or layout inspection, no buffer caches
    (attributes named ``_something`` holding arrays between calls) in ``manualbp/layers/``."""
    tree = ast.parse(path.read_text())
    assert speed_devices(tree, path.name) == []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            assert not (isinstance(node.value, ast.Name) and node.value.id == "self"
                        and node.attr.startswith("_")), f"{path.name}:{node.lineno} caches self.{node.attr}"


def with_helpers(functions):
    """``functions`` and every function of :mod:`manualbp.ops` they call, directly or not."""
    found, todo = {}, list(functions)
    while todo:
        function = todo.pop()
        if function in found:
            continue
        lines, first = inspect.getsourcelines(function)
        found[function] = tree = ast.parse(textwrap.dedent("".join(lines)))
        ast.increment_lineno(tree, first - 1)                  # line numbers of the file
        for node in ast.walk(tree):
            target = function.__globals__.get(node.id) if isinstance(node, ast.Name) else None
            if inspect.isfunction(target) and target.__module__.startswith("manualbp.ops"):
                todo.append(target)
    return found


def speed_devices_of(function):
    """:func:`speed_devices` in ``function`` and the helpers it calls, and the fast modules'
    functions or modules they refer to."""
    found = []
    for f, tree in with_helpers([function]).items():
        found += speed_devices(tree, qualified(f))
        for name in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}:
            target = f.__globals__.get(name)
            module = target.__name__ if inspect.ismodule(target) else getattr(target, "__module__", None)
            if module in FAST_MODULES:
                found.append(f"{qualified(f)} refers to {name} ({module})")
    return found


@pytest.mark.parametrize("op", OPS, ids=lambda op: op.name)
def test_reference_functions_have_no_speed_devices(op):
    """Each op's reference forward and backward, and the helpers they call (im2col, windows,
    the running-statistics update, ...), are plain array code."""
    assert speed_devices_of(op.forward) + speed_devices_of(op.backward) == []


def test_the_check_sees_the_speed_devices_of_fast_kernels():
    """The same check flags the fast kernels that use them (so it can see what it forbids)."""
    for op, backend in ((conv2d, "numpy"), (conv2d, "cupy"), (batch_norm, "numpy"), (batch_norm, "cupy"),
                        (max_pool2d, "numpy"), (gaussian_noise, "numpy"), (relu, "cupy")):
        assert speed_devices_of(op.kernels[backend][0]), f"{op.name} {backend} forward passed the check"
