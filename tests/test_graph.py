"""Models as graphs: one reverse pass where the deltas of a value used twice add up (Eq. 2
through a sum), the nodes it skips, and the clear errors of a backward that has no forward to
match."""
import numpy as np
import pytest

from manualbp import get_backend
from manualbp.gradcheck import check_gradients, directional_check
from manualbp.layers import (INPUT, Add, BatchNorm2d, Conv2d, Graph, Linear, Normalize, ReLU, Sequential,
                             SoftmaxCrossEntropy)
from manualbp.zoo import map_noise_for

TOL = 1e-7


def bottleneck(bk, channels=4, width=2):
    """A torchvision-style Bottleneck in a few lines of graph: 1x1 -> 3x3 -> 1x1, each with batch
    norm, the block's input reused by the shortcut and joined by an ``Add``; learned noise with a
    mean on the middle convolution."""
    noise, _ = map_noise_for(bk, (width, 5, 5), "learned", conv_mean=True)
    return Graph(bk, [
        ("conv1", Conv2d(bk, channels, width, 1, bias=False), INPUT),
        ("bn1", BatchNorm2d(bk, width), "conv1"),
        ("act1", ReLU(bk), "bn1"),
        ("conv2", Conv2d(bk, width, width, 3, padding=1, bias=False, noise=noise), "act1"),
        ("bn2", BatchNorm2d(bk, width), "conv2"),
        ("act2", ReLU(bk), "bn2"),
        ("conv3", Conv2d(bk, width, channels, 1, bias=False), "act2"),
        ("bn3", BatchNorm2d(bk, channels), "conv3"),
        ("add", Add(bk), ("bn3", INPUT)),
        ("act3", ReLU(bk), "add"),
    ])


def test_a_bottleneck_graph_has_every_gradient_right():
    bk = get_backend("numpy", "float64", seed=0)
    block = bottleneck(bk)
    x = bk.asarray(np.random.default_rng(1).standard_normal((3, 4, 5, 5)))
    errors = check_gradients(block, x)
    assert "conv2.noise.sigma" in errors and "conv2.noise.mu" in errors and "input" in errors
    assert max(errors.values()) < TOL, errors


def test_deltas_of_a_value_used_three_times_add_up():
    """``y = a(x) + (x + x)``: the input's delta is the sum over its three uses."""
    bk = get_backend("numpy", "float64", seed=0)
    model = Graph(bk, [("a", Linear(bk, 3, 3), INPUT), ("twice", Add(bk), (INPUT, INPUT)),
                       ("sum", Add(bk), ("a", "twice")), ("out", Linear(bk, 3, 2), "sum")])
    x = bk.asarray(np.random.default_rng(2).standard_normal((4, 3)))
    y = bk.asarray([0, 1, 1, 0], dtype="int64")
    loss = SoftmaxCrossEntropy(bk)
    assert directional_check(model, x, loss, y) < TOL
    loss.forward(model.forward(x), y)
    dx = model.backward(loss.backward())
    delta_sum = loss.backward() @ model.children["out"].params["weight"]
    np.testing.assert_allclose(dx, delta_sum @ model.children["a"].params["weight"] + 2 * delta_sum, rtol=1e-13)


def test_sequential_is_the_chain_graph():
    bk = get_backend("numpy", "float64", seed=0)
    model = Sequential(bk, [("fc1", Linear(bk, 3, 4)), ("act1", ReLU(bk)), ("fc2", Linear(bk, 4, 2))])
    assert isinstance(model, Graph)
    assert model.edges == [("fc1", (INPUT,)), ("act1", ("fc1",)), ("fc2", ("act1",))]


def test_training_backward_skips_what_has_no_parameters_before_it(monkeypatch):
    """Without ``input_grad`` the nodes before the first layer with parameters do not run
    backward, and that layer computes no ``dL/dx``; the gradients are those of a full pass."""
    bk = get_backend("numpy", "float64", seed=0)
    model = Sequential(bk, [("norm", Normalize(bk, [0.5], [0.25])), ("fc", Linear(bk, 1, 2))])
    x = bk.asarray(np.random.default_rng(3).standard_normal((5, 1)))
    y = bk.asarray([0, 1, 1, 0, 1], dtype="int64")
    loss = SoftmaxCrossEntropy(bk)
    loss.forward(model.forward(x), y)
    model.backward(loss.backward())
    full = {k: v.copy() for k, v in model.named_gradients().items()}
    calls = []
    monkeypatch.setattr(Normalize, "backward", lambda self, *a, **k: calls.append(1))
    loss.forward(model.forward(x), y)
    assert model.backward(loss.backward(), input_grad=False) is None
    assert calls == []
    for name, grad in model.named_gradients().items():
        np.testing.assert_array_equal(grad, full[name])


def test_graph_refuses_inputs_that_are_not_earlier_nodes():
    bk = get_backend("numpy", "float64", seed=0)
    with pytest.raises(ValueError, match="not earlier nodes"):
        Graph(bk, [("a", ReLU(bk), "b"), ("b", ReLU(bk), INPUT)])


def test_backward_errors_are_clear():
    bk = get_backend("numpy", "float64", seed=0)
    layer = Linear(bk, 3, 2)
    with pytest.raises(RuntimeError, match="backward before forward"):
        layer.backward(bk.zeros((4, 2)))
    layer.forward(bk.zeros((4, 3)))
    layer.forward(bk.zeros((6, 3)))                  # a second forward before the first's backward
    with pytest.raises(ValueError, match="most recent forward"):
        layer.backward(bk.zeros((4, 2)))
    loss = SoftmaxCrossEntropy(bk)
    with pytest.raises(RuntimeError, match="before forward"):
        loss.backward()
    with pytest.raises(TypeError, match="labels must be an array of the backend"):
        loss.forward(bk.zeros((2, 3)), [0, 1])


def test_two_forward_passes_then_their_two_backward_passes():
    """A loss on clean and on adversarial logits: both forward passes first, then a backward for
    each -- the earlier one through its saved caches -- gives each pass's own gradients (those
    of a forward and backward run alone), noise draws and batch statistics included."""
    from manualbp.zoo import cnn
    bk = get_backend("numpy", "float64", seed=0)
    model = cnn(bk, "cnn-an", input_shape=(1, 8, 8), channels=(2, 3), hidden=6, classes=4)
    rng = np.random.default_rng(4)
    xs = [bk.asarray(rng.random((5, 1, 8, 8))) for _ in range(2)]
    y = bk.asarray([0, 1, 2, 3, 0], dtype="int64")
    loss = SoftmaxCrossEntropy(bk)

    def pass_alone(x, seed):
        bk.seed(seed)
        loss.forward(model.forward(x), y)
        dx = model.backward(loss.backward())
        return dx.copy(), {k: g.copy() for k, g in model.named_gradients().items()}

    state = {k: v.copy() for k, v in model.state_dict().items()}
    alone = [pass_alone(x, seed) for x, seed in zip(xs, (1, 2))]
    model.load_state_dict(state)
    seeds = []
    for x, seed in zip(xs, (1, 2)):
        bk.seed(seed)
        loss.forward(model.forward(x), y)
        seeds.append(loss.backward())
        if seed == 1:
            first = model.saved_caches()
    together = [None, None]
    for i, caches in ((1, None), (0, first)):                   # the later pass first, then the earlier
        dx = model.backward(seeds[i], caches=caches)
        together[i] = dx.copy(), {k: g.copy() for k, g in model.named_gradients().items()}
    for (dx_a, g_a), (dx_t, g_t) in zip(alone, together):
        np.testing.assert_array_equal(dx_a, dx_t)
        for name in g_a:
            np.testing.assert_array_equal(g_a[name], g_t[name], err_msg=name)
