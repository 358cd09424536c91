"""Pooling and flattening: values against loops, float64 finite-difference gradients (max
pooling on random inputs without ties), the tie rule (the first maximum in row-major order gets
the gradient, as in PyTorch), output shapes (hypothesis) and errors.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manualbp import get_backend
from manualbp.gradcheck import check_gradients
from manualbp.layers import AdaptiveAvgPool2d, AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d

TOL = 1e-7

# (kernel, stride, (H, W)); the first ones take the fast 2x2 path
POOLS = [
    pytest.param(2, None, (6, 8), id="2x2-even"),
    pytest.param(2, 2, (7, 9), id="2x2-odd-cropped"),
    pytest.param(3, 2, (7, 9), id="3x3-s2-overlap"),
    pytest.param((2, 3), (1, 2), (5, 7), id="2x3-s12"),
    pytest.param(3, None, (6, 7), id="3x3"),
    pytest.param((1, 2), (2, 1), (5, 4), id="1x2-s21"),
]


def host_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def windows(x, kernel, stride):
    """``(N, C, OH, OW, KH * KW)`` array of every window's elements in row-major order (loops)."""
    kh, kw = (kernel, kernel) if np.isscalar(kernel) else kernel
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    n, c, h, w = x.shape
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.empty((n, c, oh, ow, kh * kw))
    for r in range(oh):
        for s in range(ow):
            out[:, :, r, s] = x[:, :, r * sh:r * sh + kh, s * sw:s * sw + kw].reshape(n, c, -1)
    return out


def reference_max_grad(x, delta, kernel, stride):
    """The gradient of max pooling written out: each window's delta to its first maximum."""
    kh, kw = (kernel, kernel) if np.isscalar(kernel) else kernel
    stride = (kh, kw) if stride is None else stride
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    first = windows(x, kernel, stride).argmax(axis=-1)         # argmax: the first maximum
    dx = np.zeros_like(x)
    n, c, oh, ow = delta.shape
    for r in range(oh):
        for s in range(ow):
            i, j = np.divmod(first[:, :, r, s], kw)
            for a in range(n):
                for b in range(c):
                    dx[a, b, r * sh + i[a, b], s * sw + j[a, b]] += delta[a, b, r, s]
    return dx


@pytest.mark.parametrize("kernel, stride, hw", POOLS)
def test_max_pool_values_and_gradients(bk64, kernel, stride, hw):
    pool = MaxPool2d(bk64, kernel, stride)
    x_h = host_normal(0, (2, 3, *hw))                          # continuous: no ties
    y = pool.forward(bk64.asarray(x_h))
    np.testing.assert_array_equal(bk64.to_host(y), windows(x_h, kernel, stride).max(axis=-1))
    errors = check_gradients(pool, bk64.asarray(x_h))
    assert errors["input"] < TOL
    delta = host_normal(1, y.shape)
    pool.forward(bk64.asarray(x_h))
    dx = pool.backward(bk64.asarray(delta))
    np.testing.assert_allclose(bk64.to_host(dx), reference_max_grad(x_h, delta, kernel, stride), rtol=1e-15)


@pytest.mark.parametrize("kernel, stride, hw", POOLS)
def test_max_pool_ties_go_to_the_first_maximum(bk64, kernel, stride, hw):
    """Small integers make ties common (as zeros after a ReLU); every window's whole gradient
    must land on one element, the first maximum in row-major order."""
    x_h = np.random.default_rng(2).integers(0, 3, (3, 2, *hw)).astype(np.float64)
    pool = MaxPool2d(bk64, kernel, stride)
    y = pool.forward(bk64.asarray(x_h))
    np.testing.assert_array_equal(bk64.to_host(y), windows(x_h, kernel, stride).max(axis=-1))
    delta = host_normal(3, y.shape)
    dx = pool.backward(bk64.asarray(delta))
    np.testing.assert_allclose(bk64.to_host(dx), reference_max_grad(x_h, delta, kernel, stride), rtol=1e-15)


def test_max_pool_tie_rule_by_hand():
    bk = get_backend("numpy", "float64", 0)
    pool = MaxPool2d(bk, 2)
    x = np.array([[1.0, 1.0], [1.0, 1.0],      # all equal: top left
                  [0.0, 2.0], [2.0, 2.0],      # top right
                  [0.0, 0.0], [3.0, 3.0],      # bottom left
                  [0.0, 1.0], [0.0, 4.0]])     # bottom right
    x = x.reshape(4, 2, 2).transpose(1, 0, 2).reshape(1, 1, 2, 8)
    pool.forward(x)
    dx = pool.backward(np.array([[[[1.0, 2.0, 3.0, 4.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[1, 0, 0, 2, 0, 0, 0, 0], [0, 0, 0, 0, 3, 0, 0, 4]])


def test_max_pool_matches_pytorch_with_ties(torch):
    """Same values and gradients as ``torch.nn.functional.max_pool2d`` on inputs full of ties."""
    bk = get_backend("numpy", "float64", 0)
    x_h = np.random.default_rng(4).integers(0, 2, (4, 3, 8, 10)).astype(np.float64)
    for kernel, stride in ((2, 2), (3, 2), ((2, 3), (1, 2))):
        pool = MaxPool2d(bk, kernel, stride)
        y = pool.forward(x_h)
        delta = host_normal(5, y.shape)
        dx = pool.backward(delta)
        xt = torch.tensor(x_h, requires_grad=True)
        yt = torch.nn.functional.max_pool2d(xt, kernel, stride)
        yt.backward(torch.tensor(delta))
        np.testing.assert_array_equal(y, yt.detach().numpy())
        np.testing.assert_array_equal(dx, xt.grad.numpy())


@pytest.mark.parametrize("kernel, stride, hw", POOLS)
def test_avg_pool(bk64, kernel, stride, hw):
    pool = AvgPool2d(bk64, kernel, stride)
    x_h = host_normal(6, (2, 3, *hw))
    y = pool.forward(bk64.asarray(x_h))
    np.testing.assert_allclose(bk64.to_host(y), windows(x_h, kernel, stride).mean(axis=-1), rtol=1e-13)
    assert check_gradients(pool, bk64.asarray(x_h))["input"] < TOL


@pytest.mark.parametrize("kind", [MaxPool2d, AvgPool2d])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (2, 2, 1), ((3, 2), 1, (1, 0))])
def test_padded_pooling(bk64, kind, kernel, stride, padding):
    """Max-pooling pads with -inf, average pooling with zeros that count (PyTorch's defaults):
    the same as pooling the padded input by hand; gradients by finite differences."""
    pool = kind(bk64, kernel, stride, padding)
    x_h = host_normal(8, (2, 3, 7, 6))
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    fill = -np.inf if kind is MaxPool2d else 0.0
    padded = np.pad(x_h, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    y = bk64.to_host(pool.forward(bk64.asarray(x_h)))
    reduce = np.max if kind is MaxPool2d else np.mean
    np.testing.assert_allclose(y, reduce(windows(padded, kernel, stride), axis=-1), rtol=1e-14)
    assert y.shape[1:] == pool.output_shape((3, 7, 6))
    assert check_gradients(pool, bk64.asarray(x_h))["input"] < TOL
    with pytest.raises(ValueError, match="padding .* must be between 0 and half the kernel"):
        kind(bk64, 2, 2, 2)


def test_adaptive_avg_pool_keeps_four_dimensions(bk64):
    x = bk64.asarray(host_normal(9, (3, 4, 5, 6)))
    pool = AdaptiveAvgPool2d(bk64, 1)
    y = pool.forward(x)
    assert y.shape == (3, 4, 1, 1) and pool.output_shape((4, 5, 6)) == (4, 1, 1)
    np.testing.assert_allclose(bk64.to_host(y)[:, :, 0, 0], bk64.to_host(x).mean(axis=(2, 3)), rtol=1e-14)
    assert check_gradients(pool, x)["input"] < TOL
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        AdaptiveAvgPool2d(bk64, 0)


def test_global_avg_pool_and_flatten(bk64):
    x = bk64.asarray(host_normal(7, (3, 4, 5, 6)))
    gap = GlobalAvgPool2d(bk64)
    np.testing.assert_allclose(bk64.to_host(gap.forward(x)), bk64.to_host(x).mean(axis=(2, 3)), rtol=1e-14)
    assert check_gradients(gap, x)["input"] < TOL
    flat = Flatten(bk64)
    y = flat.forward(x)
    assert y.shape == (3, 120) and flat.output_shape((4, 5, 6)) == (120,)
    np.testing.assert_array_equal(bk64.to_host(y), bk64.to_host(x).reshape(3, -1))
    assert check_gradients(flat, x)["input"] < TOL


def test_flatten_keeps_the_layout_of_its_input_in_the_gradient(bk64):
    x = bk64.asarray(np.ascontiguousarray(host_normal(12, (3, 4, 2, 5)).transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2)
    flat = Flatten(bk64)
    y = flat.forward(x)
    np.testing.assert_array_equal(bk64.to_host(y), bk64.to_host(x).reshape(3, -1))
    dx = flat.backward(y * 2)
    assert dx.strides == x.strides or bk64.name != "numpy"      # CuPy's element-wise results are C-ordered
    np.testing.assert_array_equal(bk64.to_host(dx), 2 * bk64.to_host(x))
    assert check_gradients(flat, x.copy())["input"] < TOL


def test_outputs_keep_the_input_layout():
    """A ``(C, N, H, W)``-ordered input (what Conv2d returns) stays in that order through
    pooling and the gradient, so the next convolution needs no transpose."""
    bk = get_backend("numpy", "float32", 0)
    x = np.random.default_rng(8).standard_normal((3, 2, 6, 6)).astype(np.float32).transpose(1, 0, 2, 3)
    for pool in (MaxPool2d(bk, 2),):                           # the fast 2x2 kernel
        y = pool.forward(x)
        assert y.transpose(1, 0, 2, 3).flags.c_contiguous
        assert pool.backward(bk.xp.ones_like(y)).transpose(1, 0, 2, 3).flags.c_contiguous
    gap = GlobalAvgPool2d(bk)
    assert gap.backward(bk.xp.ones_like(gap.forward(x))).transpose(1, 0, 2, 3).flags.c_contiguous


def test_no_input_gradient_requested():
    bk = get_backend("numpy", "float64", 0)
    for layer in (MaxPool2d(bk, 2), AvgPool2d(bk, 2), GlobalAvgPool2d(bk), Flatten(bk)):
        y = layer.forward(np.ones((1, 1, 4, 4)))
        assert layer.backward(np.ones_like(y), input_grad=False) is None


def test_clear_errors():
    bk = get_backend("numpy", "float64", 0)
    for layer in (MaxPool2d(bk, 2), AvgPool2d(bk, 2), GlobalAvgPool2d(bk)):
        with pytest.raises(ValueError, match="4-D input"):
            layer.forward(np.zeros((2, 4, 4)))
    for layer in (MaxPool2d(bk, 3), AvgPool2d(bk, (1, 5))):
        with pytest.raises(ValueError, match="larger than the input"):
            layer.forward(np.zeros((1, 1, 2, 4)))
    with pytest.raises(ValueError, match="must be positive"):
        MaxPool2d(bk, 2, 0)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        Flatten(bk).forward(np.zeros(3))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
       st.integers(1, 9), st.integers(1, 9), st.sampled_from(["max", "avg"]))
def test_pool_shapes_for_any_geometry(kh, kw, sh, sw, h, w, kind):
    bk = get_backend("numpy", "float64", 0)
    pool = (MaxPool2d if kind == "max" else AvgPool2d)(bk, (kh, kw), (sh, sw))
    x = host_normal(9, (2, 3, h, w))
    if kh > h or kw > w:
        with pytest.raises(ValueError, match="larger than the input"):
            pool.forward(x)
        return
    y = pool.forward(x)
    assert y.shape == (2, 3, (h - kh) // sh + 1, (w - kw) // sw + 1) == (2, *pool.output_shape((3, h, w)))
    reduce = np.max if kind == "max" else np.mean
    np.testing.assert_allclose(y, reduce(windows(x, (kh, kw), (sh, sw)), axis=-1), rtol=1e-13)
    dx = pool.backward(np.ones_like(y))
    assert dx.shape == x.shape
    # every window passes on exactly its delta: the gradient sums to the number of windows
    assert abs(float(dx.sum()) - y.size) < 1e-9 * y.size


@pytest.mark.parametrize("threads", ["2", "3"])
def test_threaded_max_pool_gives_identical_results(monkeypatch, threads):
    """Large 2x2 max-pooling splits channels (or the batch) over threads: same bits as serial,
    in every memory layout a convolution can produce."""
    import importlib
    module = importlib.import_module("manualbp.parallel")
    bk = get_backend("numpy", "float32", 0)
    base = np.random.default_rng(10).integers(0, 3, (4, 5, 8, 6)).astype(np.float32)   # ties
    layouts = [base, np.ascontiguousarray(base.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3),
               np.ascontiguousarray(base.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2), base[:1]]
    delta = np.random.default_rng(11).standard_normal((4, 5, 4, 3)).astype(np.float32)
    results = {}
    for setting in ("1", threads):
        monkeypatch.setenv("MANUALBP_NUM_THREADS", setting)
        monkeypatch.setattr(module, "PARALLEL_MIN_SIZE", 0)
        for k, x in enumerate(layouts):
            pool = MaxPool2d(bk, 2)
            y = pool.forward(x)
            results.setdefault(k, []).append((y, pool.backward(delta[:len(x)])))
    for k, ((y0, dx0), (y1, dx1)) in results.items():
        np.testing.assert_array_equal(y0, y1)
        np.testing.assert_array_equal(dx0, dx1)
        np.testing.assert_array_equal(dx0, reference_max_grad(layouts[k].astype(np.float64),
                                                              delta[:len(layouts[k])].astype(np.float64), 2, None))
