"""Convolution with dilation and groups (depthwise included) and pooling with ``ceil_mode``,
``count_include_pad`` and adaptive output sizes.

Each op against float64 finite differences, torch and JAX autograd and its NumPy fast kernel
(``check_op``); the CuPy kernels on NumPy arrays and on the CuPy stand-in, in every memory
layout, with the ``need`` contract; each trace rule against torch's ATen op (``check_rule``) on
the patterns torchvision models use; the layers, the module import rules and every refusal.
"""
import importlib

import numpy as np
import pytest
from opcheck import check_op, check_rule

from manualbp import get_backend
from manualbp.gradcheck import check_gradients
from manualbp.layers import AdaptiveAvgPool2d, AvgPool2d, Conv2d, MaxPool2d
from manualbp.ops.conv import conv2d
from manualbp.ops.im2col_fast import in_layout_of
from manualbp.ops.pool import adaptive_avg_pool2d, avg_pool2d, global_avg_pool2d, max_pool2d, pool_output_size
from manualbp.verify.trace import Call, Value
from manualbp.verify.walk import ConversionError


def normal(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape)


# --- conv2d -------------------------------------------------------------------------------------

#: (x shape, weight shape, settings)
CONVS = {
    "dilation-2": ((2, 3, 7, 8), (4, 3, 3, 3), {"padding": (2, 2), "dilation": (2, 2)}),
    "dilation-oblong-strided": ((2, 2, 9, 7), (3, 2, 3, 2), {"stride": (2, 1), "padding": (1, 0), "dilation": (2, 3)}),
    "groups-2": ((2, 4, 6, 5), (6, 2, 3, 3), {"padding": (1, 1), "groups": 2}),
    "groups-2-dilated-strided": ((2, 4, 9, 8), (4, 2, 3, 3), {"stride": (2, 2), "padding": (2, 2),
                                                              "dilation": (2, 2), "groups": 2}),
    "depthwise": ((2, 4, 6, 7), (4, 1, 3, 3), {"padding": (1, 1), "groups": 4}),
    "depthwise-multiplier-2": ((2, 4, 6, 5), (8, 1, 3, 3), {"padding": (1, 1), "groups": 4}),
    "depthwise-stride-2-padded": ((2, 4, 7, 8), (4, 1, 3, 3), {"stride": (2, 2), "padding": (1, 1), "groups": 4}),
    "depthwise-5x5-dilated": ((2, 3, 9, 9), (3, 1, 5, 5), {"padding": (2, 4), "dilation": (1, 2), "groups": 3}),
    "depthwise-padding-past-kernel": ((2, 3, 4, 5), (6, 1, 2, 2), {"stride": (2, 1), "padding": (2, 1), "groups": 3}),
}


def conv_inputs(name, bias=True):
    x_shape, w_shape, settings = CONVS[name]
    return [normal(1, *x_shape), normal(2, *w_shape), normal(3, w_shape[0]) if bias else None], settings


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(CONVS))
def test_conv2d_with_dilation_and_groups(name, bias):
    check_op(conv2d, *conv_inputs(name, bias))


def test_a_wrong_backward_is_caught(monkeypatch):
    """dL/dw of each group taken from the wrong group: finite differences see it."""
    right = conv2d.backward

    def wrong(xp, delta, cache, need):
        dx, dw, db = right(xp, delta, cache, need)
        return dx, xp.roll(dw, 1, axis=0), db

    monkeypatch.setattr(conv2d, "backward", wrong)
    with pytest.raises(AssertionError, match="d/dweight off finite differences"):
        check_op(conv2d, *conv_inputs("groups-2"))


LAYOUTS = {"C order": (0, 1, 2, 3), "batch innermost": (1, 2, 3, 0), "channel major": (1, 0, 2, 3)}


def laid_out(xp, a, order):
    return xp.array(np.ascontiguousarray(a.transpose(order))).transpose(tuple(np.argsort(order)))


def host(a):
    return np.asarray(a.get() if hasattr(a, "get") else a)


@pytest.mark.parametrize("name", list(CONVS))
def test_fast_kernels_equal_the_reference_in_every_layout(name, backend_name):
    """NumPy arrays run both kernel sets (CuPy's use array operations only), CuPy arrays CuPy's;
    the parameters' gradients are written into the arrays ``need`` hands in; the NumPy kernels
    return their output batch innermost."""
    xp = get_backend(backend_name).xp
    (x, w, b), settings = conv_inputs(name)
    out, cache = conv2d.forward(np, x, w, b, **settings)
    delta = normal(4, *out.shape)
    expected = conv2d.backward(np, delta, cache, (True, True, True))
    for backend in ("numpy", "cupy") if backend_name == "numpy" else ("cupy",):
        forward, backward = conv2d.kernels[backend]
        for layout, order in LAYOUTS.items():
            what = f"{name}, {backend} kernel, {layout}"
            fast_out, fast_cache = forward(xp, laid_out(xp, x, order), xp.asarray(w), xp.asarray(b), **settings)
            np.testing.assert_allclose(host(fast_out), out, rtol=1e-12, atol=1e-12, err_msg=what)
            if backend == "numpy":
                assert fast_out.transpose(1, 2, 3, 0).flags.c_contiguous, what
            need = (True, xp.full(w.shape, np.nan), xp.full(b.shape, np.nan))
            grads = backward(xp, in_layout_of(xp.asarray(delta), fast_out, xp), fast_cache, need)
            assert grads[1] is need[1] and grads[2] is need[2], what
            for g, e in zip(grads, expected):
                np.testing.assert_allclose(host(g), e, rtol=1e-12, atol=1e-12, err_msg=what)
            only_dw = backward(xp, xp.asarray(delta), forward(xp, xp.asarray(x), xp.asarray(w), None, **settings)[1],
                               (None, True, None))
            assert only_dw[0] is None and only_dw[2] is None, what
            np.testing.assert_allclose(host(only_dw[1]), expected[1], rtol=1e-12, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("threads", ["2", "3"])
def test_depthwise_threads_give_identical_results(monkeypatch, threads):
    """The depthwise kernel splits channels over threads: bit for bit the serial result."""
    parallel = importlib.import_module("manualbp.parallel")
    (x, w, b), settings = conv_inputs("depthwise-multiplier-2")
    forward, backward = conv2d.kernels["numpy"]
    delta = normal(5, 2, 8, 6, 5)

    def run():
        out, cache = forward(np, x, w, b, **settings)
        return [out, *backward(np, delta, cache, (True, True, True))]

    monkeypatch.setenv("MANUALBP_NUM_THREADS", "1")
    serial = run()
    monkeypatch.setenv("MANUALBP_NUM_THREADS", threads)
    monkeypatch.setattr(parallel, "PARALLEL_MIN_SIZE", 0)
    for a, b_ in zip(run(), serial):
        np.testing.assert_array_equal(a, b_)


def test_conv2d_layer_with_dilation_and_groups(bk64):
    conv = Conv2d(bk64, 4, 8, 3, stride=2, padding=2, dilation=2, groups=4)
    assert conv.params["weight"].shape == (8, 1, 3, 3)
    assert repr(conv) == ("Conv2d(4, 8, kernel_size=(3, 3), stride=(2, 2), padding=(2, 2), dilation=(2, 2), "
                          "groups=4, bias=True)")
    x = bk64.asarray(normal(6, 2, 4, 9, 8))
    assert conv.forward(x).shape[1:] == conv.output_shape((4, 9, 8)) == (8, 5, 4)
    assert max(check_gradients(conv, x).values()) < 1e-7
    grouped = Conv2d(bk64, 4, 6, (3, 2), padding=(1, 0), groups=2, bias=False)
    assert max(check_gradients(grouped, bk64.asarray(normal(7, 2, 4, 5, 6))).values()) < 1e-7


def test_conv2d_layer_refuses_bad_groups_and_dilation(bk64):
    with pytest.raises(ValueError, match="groups 4 must be a positive divisor of both in_channels 4 and "
                                         "out_channels 6"):
        Conv2d(bk64, 4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="must be positive"):
        Conv2d(bk64, 4, 4, 3, dilation=0)
    with pytest.raises(ValueError, match=r"kernel 3x3 \(dilated to 5x5\) is larger than the padded input 4x4"):
        Conv2d(bk64, 1, 1, 3, dilation=2).forward(bk64.asarray(np.zeros((1, 1, 4, 4))))


# --- pooling ------------------------------------------------------------------------------------

def pool(kernel, stride, padding=0, **flags):
    return {"kernel_size": (kernel, kernel), "stride": (stride, stride), "padding": (padding, padding), **flags}


#: (op, x shape, settings)
POOLS = {
    "max-ceil-adds-a-window": (max_pool2d, (2, 3, 7, 6), pool(2, 2, ceil_mode=True)),
    "max-2x2-ceil-even": (max_pool2d, (2, 3, 6, 8), pool(2, 2, ceil_mode=True)),
    "max-3x3-s2-ceil (googlenet, squeezenet)": (max_pool2d, (2, 3, 8, 9), pool(3, 2, ceil_mode=True)),
    "max-ceil-last-window-past-the-input-dropped": (max_pool2d, (2, 3, 5, 5), pool(2, 2, 1, ceil_mode=True)),
    "max-ceil-padded": (max_pool2d, (2, 3, 7, 8), pool(3, 2, 1, ceil_mode=True)),
    "avg-2x2 (densenet)": (avg_pool2d, (2, 3, 6, 7), pool(2, 2)),
    "avg-ceil-adds-a-window": (avg_pool2d, (2, 3, 7, 6), pool(2, 2, ceil_mode=True)),
    "avg-ceil-padded": (avg_pool2d, (2, 3, 6, 7), pool(3, 2, 1, ceil_mode=True)),
    "avg-ceil-padded-without-padding-counted": (avg_pool2d, (2, 3, 6, 7),
                                                pool(3, 2, 1, ceil_mode=True, count_include_pad=False)),
    "avg-padded-without-padding-counted": (avg_pool2d, (2, 3, 5, 6), pool(3, 1, 1, count_include_pad=False)),
    "avg-ceil-last-window-past-the-input-dropped": (avg_pool2d, (2, 3, 5, 5),
                                                    pool(2, 2, 1, ceil_mode=True, count_include_pad=False)),
}


@pytest.mark.parametrize("name", list(POOLS))
def test_pooling_with_ceil_mode_and_count_include_pad(name):
    op, shape, settings = POOLS[name]
    check_op(op, [normal(8, *shape)], settings)


def test_ceil_mode_output_sizes_follow_torch():
    """``ceil((H + 2P - K) / S) + 1``, less one where the last window would start at or past
    ``H + P``; the floor rule without ``ceil_mode``."""
    assert pool_output_size(7, 2, 2, 0, True) == 4 and pool_output_size(7, 2, 2, 0) == 3
    assert pool_output_size(5, 2, 2, 1, True) == 3                     # ceil gives 4; its window starts at 6
    assert pool_output_size(112, 3, 2, 0, True) == 56 and pool_output_size(112, 3, 2, 0) == 55
    assert pool_output_size(8, 2, 2, 0, True) == 4


#: (x shape, output size)
ADAPTIVE = {
    "1x1": ((2, 3, 5, 6), (1, 1)),
    "2x3": ((2, 3, 5, 6), (2, 3)),
    "7x7-from-1x1 (vgg)": ((2, 3, 1, 1), (7, 7)),
    "7x7-from-3x3": ((2, 3, 3, 3), (7, 7)),
    "5-to-3-uneven": ((2, 3, 5, 5), (3, 3)),
    "keep-the-height": ((2, 3, 4, 7), (None, 3)),
}


@pytest.mark.parametrize("name", list(ADAPTIVE))
def test_adaptive_avg_pool2d_to_any_size(name):
    shape, size = ADAPTIVE[name]
    check_op(adaptive_avg_pool2d, [normal(9, *shape)], {"output_size": size})


def test_adaptive_windows_by_hand():
    """5 -> 3: windows [0, 2), [1, 4), [3, 5); 1 -> 3: the one value three times."""
    x = np.arange(5.0).reshape(1, 1, 5, 1)
    out = adaptive_avg_pool2d.forward(np, x, output_size=(3, 1))[0]
    np.testing.assert_allclose(out.ravel(), [0.5, 2.0, 3.5])
    np.testing.assert_array_equal(adaptive_avg_pool2d.forward(np, np.full((1, 1, 1, 1), 2.0), (3, 3))[0],
                                  np.full((1, 1, 3, 3), 2.0))


def test_pooling_layers(bk64):
    x = bk64.asarray(normal(10, 2, 3, 7, 6))
    for layer in (MaxPool2d(bk64, 3, 2, 1, ceil_mode=True), AvgPool2d(bk64, 2, ceil_mode=True),
                  AvgPool2d(bk64, 3, 2, 1, ceil_mode=True, count_include_pad=False),
                  AdaptiveAvgPool2d(bk64, (None, 4)), AdaptiveAvgPool2d(bk64, 9)):
        y = layer.forward(x)
        assert y.shape[1:] == layer.output_shape((3, 7, 6)), layer
        assert check_gradients(layer, x)["input"] < 1e-7, layer
    assert repr(AvgPool2d(bk64, 3, 2, 1, ceil_mode=True, count_include_pad=False)) == (
        "AvgPool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False)")
    assert AdaptiveAvgPool2d(bk64, (1, 1)).op is global_avg_pool2d       # global pooling's fast path
    assert AdaptiveAvgPool2d(bk64, 2).op is adaptive_avg_pool2d
    with pytest.raises(ValueError, match="output_size must be a positive int, None or a pair"):
        AdaptiveAvgPool2d(bk64, 0)


# --- the trace rules ----------------------------------------------------------------------------

def test_conv_trace_rules_match_aten():
    x, x8, x16, x64 = normal(11, 2, 3, 8, 8), normal(12, 2, 8, 9, 9), normal(13, 2, 16, 7, 7), normal(14, 2, 64, 5, 5)
    w, b = normal(15, 4, 3, 3, 3), normal(16, 4)
    check_rule("aten.conv2d.default", x, w, b, [1, 1], [1, 1], [1, 1], 1)           # resnet
    check_rule("aten.conv2d.default", x, w)                                           # the defaults
    check_rule("aten.conv2d.default", x8, normal(17, 8, 1, 3, 3), None, [2, 2], [1, 1], [1, 1], 8)   # mobilenet
    check_rule("aten.conv2d.default", x8, normal(18, 16, 1, 3, 3), None, [1, 1], [1, 1], [1, 1], 8)  # multiplier 2
    check_rule("aten.conv2d.default", x16, normal(19, 16, 8, 3, 3), None, [2, 2], [1, 1], [1, 1], 2)  # regnet
    check_rule("aten.conv2d.default", x64, normal(20, 64, 2, 3, 3), None, [1, 1], [1, 1], [1, 1], 32)  # resnext
    check_rule("aten.conv2d.default", x, w, b, [1], [2], [2], 1)                      # dilated (deeplab)
    check_rule("aten.conv2d.padding", x, w, b, [1, 1], "same", [1, 1], 1)
    check_rule("aten.conv2d.padding", x, normal(21, 4, 3, 2, 3), b, [1, 1], "same", [2, 1], 1)
    check_rule("aten.conv2d.padding", x, w, b, [2, 2], "valid", [1, 1], 1)
    check_rule("aten.conv2d.padding", x, w)
    check_rule("aten.convolution.default", x, w, b, [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    check_rule("aten.convolution.default", x8, normal(22, 8, 1, 3, 3), None, [2, 2], [1, 1], [2, 2], False,
               [0, 0], 8)


def test_pool_trace_rules_match_aten():
    x = normal(23, 2, 3, 11, 10)
    check_rule("aten.max_pool2d.default", x, [3, 3], [2, 2], [0, 0], [1, 1], True)    # googlenet, squeezenet
    check_rule("aten.max_pool2d.default", x, [3, 3], [2, 2], [1, 1])                  # resnet's stem
    check_rule("aten.max_pool2d.default", x, [2, 2])                                  # stride: the kernel
    check_rule("aten.max_pool2d.default", x, [2, 2], [], [0, 0], [1, 1], True)
    check_rule("aten.avg_pool2d.default", x, [2, 2], [2, 2])                          # densenet
    check_rule("aten.avg_pool2d.default", x, [3, 3], [1, 1], [1, 1])                  # inception
    check_rule("aten.avg_pool2d.default", x, [3, 3], [2, 2], [1, 1], True, False)
    check_rule("aten.avg_pool2d.default", x, [2], [], 0, True, True, None)
    check_rule("aten.adaptive_avg_pool2d.default", normal(24, 2, 3, 1, 1), [7, 7])    # vgg on a 1x1 map
    check_rule("aten.adaptive_avg_pool2d.default", normal(25, 2, 3, 7, 7), [1, 1])    # resnet
    check_rule("aten._adaptive_avg_pool2d.default", normal(26, 2, 3, 5, 6), [3, 4])


def call():
    return Call(get_backend("numpy", "float64", 0), "test call")


def maps(*shape):
    return Value("t0", shape)


def test_trace_rules_refuse_what_the_ops_do_not_compute():
    conv = conv2d.tracers["aten.conv2d.default"]
    with pytest.raises(ConversionError, match=r"input of shape \(3, 8, 8\); expected a batch \(N, C, H, W\)"):
        conv(call(), maps(3, 8, 8), maps(4, 3, 3, 3))
    with pytest.raises(ConversionError, match=r"stride \[1, 2, 3\]; expected an int or a list of 1 or 2 ints"):
        conv(call(), maps(2, 3, 8, 8), maps(4, 3, 3, 3), None, [1, 2, 3])
    with pytest.raises(ConversionError, match="padding 'same' with kernel \\(2, 2\\) and dilation \\(1, 1\\)"):
        conv2d.tracers["aten.conv2d.padding"](call(), maps(2, 3, 8, 8), maps(4, 3, 2, 2), None, 1, "same")
    convolution = conv2d.tracers["aten.convolution.default"]
    with pytest.raises(ConversionError, match="a transposed convolution; expected transposed=False"):
        convolution(call(), maps(2, 3, 8, 8), maps(3, 4, 3, 3), None, [1, 1], [0, 0], [1, 1], True, [0, 0], 1)
    with pytest.raises(ConversionError, match="expected a 2-D convolution"):
        convolution(call(), maps(2, 3, 8), maps(4, 3, 3), None, [1], [0], [1], False, [0], 1)
    with pytest.raises(ConversionError, match=r"dilation \[2, 2\]; expected 1"):
        max_pool2d.tracers["aten.max_pool2d.default"](call(), maps(2, 3, 8, 8), [2, 2], [2, 2], [0, 0], [2, 2])
    with pytest.raises(ConversionError, match="expected a batch of feature maps"):
        max_pool2d.tracers["aten.max_pool2d.default"](call(), maps(3, 8, 8), [2, 2])
    with pytest.raises(ConversionError, match="divisor_override 4; expected None"):
        avg_pool2d.tracers["aten.avg_pool2d.default"](call(), maps(2, 3, 8, 8), [2, 2], [], 0, False, True, 4)
    with pytest.raises(ConversionError, match="expected a batch of feature maps"):
        adaptive_avg_pool2d.tracers["aten.adaptive_avg_pool2d.default"](call(), maps(3, 8, 8), [2, 2])


# --- PyTorch modules, traced ---------------------------------------------------------------------

def test_traced_modules_take_the_new_settings(torch):
    from manualbp.verify import from_torch
    nn = torch.nn
    torch.manual_seed(0)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    for module in (nn.Conv2d(4, 8, 3, stride=2, padding=2, dilation=2, groups=4), nn.Conv2d(4, 6, 1, groups=2),
                   nn.Conv2d(4, 4, 3, padding="same"), nn.MaxPool2d(3, 2, ceil_mode=True),
                   nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                   nn.AdaptiveAvgPool2d((None, 3)), nn.AdaptiveAvgPool2d(1), nn.AdaptiveAvgPool2d((12, 5))):
        module = module.double()
        model = from_torch(module, (4, 9, 8))
        np.testing.assert_allclose(model.forward(model.bk.asarray(x.numpy())), module(x).detach().numpy(),
                                   rtol=1e-12, atol=1e-14, err_msg=repr(module))


def test_traced_modules_refuse_what_the_ops_do_not_compute(torch):
    from manualbp.verify import from_torch
    nn = torch.nn
    for module, words in ((nn.Conv2d(2, 2, 2, padding="same"), "padding 'same'"),
                          (nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "no op traces aten.pad.default|"
                                                                                  "mode 'reflect'"),
                          (nn.MaxPool2d(2, dilation=2), "dilation"),
                          (nn.AvgPool2d(2, divisor_override=3), "divisor_override 3; expected None")):
        with pytest.raises(ConversionError, match=words):
            from_torch(module.double(), (2, 8, 8))
