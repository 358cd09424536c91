"""Convolution by im2col: the reference and the fast im2col/col2im against their definitions
(adjointness, the naive convolution), float64 finite-difference checks of every gradient of
Conv2d on both paths (with and without bias, with a noise child on the feature map), output
shapes for arbitrary geometries (hypothesis), and clear errors for bad input.
"""
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manualbp import get_backend
from manualbp.gradcheck import check_gradients
from manualbp.layers import Conv2d, GaussianNoise
from manualbp.ops import conv as conv_op
from manualbp.ops import im2col_fast as fast
from manualbp.ops.im2col import col2im, conv2d_naive, conv_geometry, im2col

TOL = 1e-7

# (in_channels, out_channels, kernel, stride, padding, (H, W))
GEOMETRIES = [
    pytest.param(3, 4, 3, 1, 1, (7, 6), id="3x3-s1-p1"),
    pytest.param(2, 3, 3, 2, 1, (9, 8), id="3x3-s2-p1"),
    pytest.param(2, 3, (2, 3), 2, (1, 0), (8, 7), id="2x3-s2-p10"),
    pytest.param(3, 2, (3, 2), (1, 2), (2, 1), (5, 6), id="3x2-s12-p21"),
    pytest.param(1, 2, 5, 1, 0, (6, 9), id="5x5-valid"),
    pytest.param(2, 2, 1, 1, 0, (4, 5), id="1x1"),
    pytest.param(2, 3, 4, 3, 2, (7, 7), id="4x4-s3-p2"),
]


def host_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def assert_all_below(errors, expected_names, tol=TOL):
    assert set(errors) == set(expected_names), "every parameter and the input must be checked"
    bad = {name: err for name, err in errors.items() if not err < tol}
    assert not bad, f"gradient check failed: {bad}"


# --- im2col / col2im ---------------------------------------------------------------------------

@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, hw", GEOMETRIES)
def test_im2col_matches_definition(c_in, c_out, kernel, stride, padding, hw):
    """``cols[n, c, i, j, oh, ow] = x_pad[n, c, oh SH + i, ow SW + j]``, zeros over the padding;
    the fast im2col is the same in its ``(C, KH, KW, N, OH, OW)`` order."""
    x = host_normal(0, (2, c_in, *hw))
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x.shape, kernel, stride, padding)
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = im2col(x, kernel, stride, padding, np)
    assert cols.shape == (2, c_in, kh, kw, oh, ow)
    expected = np.empty_like(cols)
    for n in range(2):
        for r in range(oh):
            for s in range(ow):
                expected[n, :, :, :, r, s] = x_pad[n, :, r * sh:r * sh + kh, s * sw:s * sw + kw]
    np.testing.assert_array_equal(cols, expected)
    np.testing.assert_array_equal(fast.im2col(x, kernel, stride, padding, np), expected.transpose(1, 2, 3, 0, 4, 5))


@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, hw", GEOMETRIES)
def test_col2im_is_the_adjoint_of_im2col(c_in, c_out, kernel, stride, padding, hw):
    """``<im2col(x), y> == <x, col2im(y)>`` for random ``x`` and ``y``: col2im is im2col's
    transpose, i.e. its backward pass; the fast col2im folds exactly what the reference folds."""
    x = host_normal(1, (3, c_in, *hw))
    cols = im2col(x, kernel, stride, padding, np)
    y = host_normal(2, cols.shape)
    folded = col2im(y, x.shape, kernel, stride, padding, np)
    lhs, rhs = float((cols * y).sum()), float((x * folded).sum())
    assert abs(lhs - rhs) <= 1e-12 * (abs(lhs) + abs(rhs))
    fast_folded = fast.col2im(np.ascontiguousarray(y.transpose(1, 2, 3, 0, 4, 5)), x.shape, kernel, stride,
                              padding, np)
    np.testing.assert_allclose(fast_folded, folded, rtol=1e-13, atol=1e-13)


def test_im2col_writes_every_entry_of_a_reused_buffer():
    x = host_normal(3, (2, 2, 5, 5))
    out = np.full((2, 3, 3, 2, 3, 3), np.nan)
    cols = fast.im2col(x, 3, 2, 1, np, out=out)
    assert cols is out and np.isfinite(out).all()
    np.testing.assert_array_equal(out, fast.im2col(x, 3, 2, 1, np))
    with pytest.raises(ValueError, match="out has shape"):
        fast.im2col(x, 3, 1, 1, np, out=out)


def test_col2im_accepts_any_output_layout():
    cols = host_normal(4, (2, 3, 3, 4, 5, 5))
    expected = fast.col2im(cols, (4, 2, 5, 5), 3, 1, 1, np)
    out = np.full((4, 2, 5, 5), np.nan)
    assert fast.col2im(cols, (4, 2, 5, 5), 3, 1, 1, np, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-15)


@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, hw", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv_matches_naive_convolution(bk64, c_in, c_out, kernel, stride, padding, hw, bias):
    conv = Conv2d(bk64, c_in, c_out, kernel, stride, padding, bias=bias)
    x = bk64.asarray(host_normal(5, (3, c_in, *hw)))
    expected = conv2d_naive(x, conv.params["weight"], conv.params.get("bias"), stride, padding, xp=bk64.xp)
    got = conv.forward(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(bk64.to_host(got), bk64.to_host(expected), rtol=1e-12, atol=1e-12)


def test_naive_convolution_by_hand():
    """A 1-channel 3x3 image, 2x2 kernel of ones, stride 1, no padding: sums of 2x2 blocks."""
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    np.testing.assert_array_equal(conv2d_naive(x, w, None, 1, 0, np)[0, 0], [[8, 12], [20, 24]])
    np.testing.assert_array_equal(conv2d_naive(x, w, np.array([1.0]), 1, 1, np)[0, 0, 0], [1, 2, 4, 3])


# --- Conv2d gradients ------------------------------------------------------------------------

@pytest.mark.parametrize("c_in, c_out, kernel, stride, padding, hw", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("direct", [False, True], ids=["transposed-gemm", "direct-gemm"])
def test_conv_gradients(bk64, monkeypatch, c_in, c_out, kernel, stride, padding, hw, bias, direct):
    """Both orientations of the fast kernel's weight-gradient GEMM (small weights: cols delta^T,
    transposed), and the reference."""
    monkeypatch.setattr(conv_op, "DIRECT_GRAD_SIZE", 0 if direct else 1 << 62)
    conv = Conv2d(bk64, c_in, c_out, kernel, stride, padding, bias=bias)
    x = bk64.asarray(host_normal(6, (2, c_in, *hw)))
    errors = check_gradients(conv, x)
    assert_all_below(errors, ["weight", "input"] + (["bias"] if bias else []))


@pytest.mark.parametrize("learn_mean", [True, False])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv_with_noise_on_the_feature_map(bk64, learn_mean, bias):
    """One ``sigma`` (and ``mu``) per element of the ``(C_out, OH, OW)`` map; eps held fixed."""
    shape = Conv2d(bk64, 2, 3, (3, 2), 2, 1).output_shape((2, 7, 6))
    noise = GaussianNoise(bk64, shape, mode="learned", learn_mean=learn_mean)
    conv = Conv2d(bk64, 2, 3, (3, 2), 2, 1, bias=bias, noise=noise)
    noise.params["sigma"][...] = bk64.asarray(np.random.default_rng(7).uniform(0.2, 1.5, shape))
    if learn_mean:
        noise.params["mu"][...] = bk64.asarray(host_normal(8, shape))
    x = bk64.asarray(host_normal(9, (3, 2, 7, 6)))
    errors = check_gradients(conv, x)
    expected = ["weight", "noise.sigma", "input"] + (["bias"] if bias else []) + (["noise.mu"] if learn_mean else [])
    assert_all_below(errors, expected)
    assert noise.eps.shape == (3, *shape)


def test_conv_gradients_in_closed_form(bk64):
    """``dL/dw[o, c, i, j] = sum delta[n, o, oh, ow] x_pad[n, c, oh + i, ow + j]``,
    ``dL/db = sum delta``, and ``dL/dx`` by the transposed convolution, written out by loops."""
    conv = Conv2d(bk64, 2, 3, 3, 1, 1)
    x_h, delta_h = host_normal(10, (2, 2, 4, 5)), host_normal(11, (2, 3, 4, 5))
    conv.forward(bk64.asarray(x_h))
    dx = bk64.to_host(conv.backward(bk64.asarray(delta_h)))
    w = bk64.to_host(conv.params["weight"])
    x_pad = np.pad(x_h, ((0, 0), (0, 0), (1, 1), (1, 1)))
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(w)
    for i in range(3):
        for j in range(3):
            patch = x_pad[:, :, i:i + 4, j:j + 5]
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", delta_h, patch)
            dx_pad[:, :, i:i + 4, j:j + 5] += np.einsum("nohw,oc->nchw", delta_h, w[:, :, i, j])
    np.testing.assert_allclose(bk64.to_host(conv.grads["weight"]), dw, rtol=1e-12)
    np.testing.assert_allclose(bk64.to_host(conv.grads["bias"]), delta_h.sum((0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(dx, dx_pad[:, :, 1:-1, 1:-1], rtol=1e-12, atol=1e-14)


def test_first_layer_skips_the_input_gradient(bk64):
    conv = Conv2d(bk64, 1, 2, 3, padding=1)
    x = bk64.asarray(host_normal(12, (2, 1, 5, 5)))
    delta = bk64.asarray(host_normal(13, (2, 2, 5, 5)))
    conv.forward(x)
    full = conv.backward(delta)
    grad_w = bk64.to_host(conv.grads["weight"]).copy()
    conv.forward(x)
    assert conv.backward(delta, input_grad=False) is None
    np.testing.assert_array_equal(bk64.to_host(conv.grads["weight"]), grad_w)
    assert full.shape == x.shape


def test_batch_size_and_layout_changes(bk64):
    """Batch sizes that change from call to call, and inputs in other memory layouts (those
    convolutions return) give the same result; the NumPy fast kernel's output is a view of the
    GEMM result, batch innermost."""
    conv = Conv2d(bk64, 2, 3, 3, 1, 1)
    for n in (4, 1, 4):
        x = host_normal(n, (n, 2, 6, 5))
        expected = conv2d_naive(x, bk64.to_host(conv.params["weight"]), bk64.to_host(conv.params["bias"]), 1, 1, np)
        cnhw = bk64.asarray(np.ascontiguousarray(x.transpose(1, 0, 2, 3))).transpose(1, 0, 2, 3)
        chwn = bk64.asarray(np.ascontiguousarray(x.transpose(1, 2, 3, 0))).transpose(3, 0, 1, 2)
        for inp in (bk64.asarray(x), cnhw, chwn):
            y = conv.forward(inp)
            np.testing.assert_allclose(bk64.to_host(y), expected, rtol=1e-12, atol=1e-12)
            if bk64.name == "numpy":                                       # CuPy: see test_cupy.py
                assert y.transpose(1, 2, 3, 0).flags.c_contiguous == (bk64.kernels == "fast")
    errors = check_gradients(conv, bk64.asarray(host_normal(14, (3, 2, 6, 5))))
    assert max(errors.values()) < TOL


def test_strided_input(bk64):
    conv = Conv2d(bk64, 2, 3, 3, 2, 1)
    wide = host_normal(15, (2, 2, 6, 10))
    x = bk64.asarray(wide)[:, :, :, ::2]                       # not contiguous in any order
    expected = conv2d_naive(wide[:, :, :, ::2], bk64.to_host(conv.params["weight"]),
                            bk64.to_host(conv.params["bias"]), 2, 1, np)
    np.testing.assert_allclose(bk64.to_host(conv.forward(x)), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("threads", ["2", "3"])
def test_threaded_blocks_give_identical_results(monkeypatch, threads):
    """Large fast im2col / col2im calls split channels (or the batch, when there are fewer
    channels than threads) over threads: the result must be bit for bit the serial one."""
    module = importlib.import_module("manualbp.parallel")
    rng = np.random.default_rng(16)
    cases = [((3, 5, 9, 8), 3, 1, 1), ((3, 1, 9, 8), (2, 3), 2, (1, 0)), ((2, 4, 7, 7), 3, 2, 0)]
    serial = []
    monkeypatch.setenv("MANUALBP_NUM_THREADS", "1")
    for shape, k, s, p in cases:
        x = rng.standard_normal(shape)
        cols = fast.im2col(x, k, s, p, np)
        serial.append((x, cols, fast.col2im(cols, shape, k, s, p, np)))
    monkeypatch.setenv("MANUALBP_NUM_THREADS", threads)
    monkeypatch.setattr(module, "PARALLEL_MIN_SIZE", 0)
    for (shape, k, s, p), (x, cols, folded) in zip(cases, serial):
        np.testing.assert_array_equal(fast.im2col(x, k, s, p, np), cols)
        np.testing.assert_array_equal(fast.col2im(cols, shape, k, s, p, np), folded)


def test_fast_gradients_are_written_in_place():
    """The fast kernel writes ``dL/dw`` and ``dL/db`` into the arrays ``need`` hands it and returns
    them (the module copies nothing); through the module, they land in the parameter store."""
    bk = get_backend("numpy", "float64", 0)
    conv = Conv2d(bk, 2, 3, 3, padding=1)
    store = conv.parameter_store()
    x, delta = host_normal(15, (2, 2, 4, 4)), host_normal(16, (2, 3, 4, 4))
    forward, backward = bk.kernel(conv_op.conv2d)
    assert (forward, backward) == conv_op.conv2d.kernels["numpy"]
    out, cache = forward(np, x, conv.params["weight"], conv.params["bias"], stride=(1, 1), padding=(1, 1))
    need = (None, conv.grads["weight"], conv.grads["bias"])
    _, dw, db = backward(np, fast.in_layout_of(delta, out, np), cache, need)
    assert dw is conv.grads["weight"] and db is conv.grads["bias"]
    expected = np.concatenate([dw.ravel(), db.ravel()])
    store.grad[...] = 0
    conv.forward(x)
    conv.backward(delta)
    np.testing.assert_array_equal(store.grad, expected)
    assert float(abs(expected).min()) > 0


def test_float32_forward_and_backward(bk32):
    conv = Conv2d(bk32, 3, 4, 3, 2, 1)
    x = bk32.asarray(host_normal(17, (2, 3, 9, 9)))
    y = conv.forward(x)
    assert y.dtype == bk32.dtype and y.shape == (2, 4, 5, 5)
    dx = conv.backward(bk32.xp.ones_like(y))
    assert dx.dtype == bk32.dtype and dx.shape == x.shape
    assert conv.grads["weight"].dtype == bk32.dtype


def test_weight_init_like_pytorch():
    bk = get_backend("numpy", "float32", 0)
    conv = Conv2d(bk, 4, 8, (3, 5))
    bound = 1 / np.sqrt(4 * 3 * 5)
    for name in ("weight", "bias"):
        p = conv.params[name]
        assert p.dtype == np.float32 and np.abs(p).max() <= bound
    assert np.abs(conv.params["weight"]).max() > 0.95 * bound       # 480 draws fill the range
    assert conv.params["weight"].shape == (8, 4, 3, 5)


# --- errors ------------------------------------------------------------------------------------

def test_clear_errors():
    bk = get_backend("numpy", "float64", 0)
    conv = Conv2d(bk, 3, 4, 3, padding=1)
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        conv.forward(np.zeros((2, 2, 5, 5)))
    with pytest.raises(ValueError, match="4-D input"):
        conv.forward(np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="4-D input"):
        conv.forward(np.zeros((2, 3, 5, 5, 1)))
    with pytest.raises(ValueError, match="kernel 5x5 is larger than the padded input 4x4"):
        Conv2d(bk, 1, 1, 5, padding=1).forward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError, match="kernel 3x3 is larger than the padded input 2x7"):
        Conv2d(bk, 1, 1, 3).forward(np.zeros((1, 1, 2, 7)))
    with pytest.raises(ValueError, match="must be positive"):
        Conv2d(bk, 1, 1, 3, stride=0)
    with pytest.raises(ValueError, match="int or a pair"):
        Conv2d(bk, 1, 1, (3, 3, 3))
    noisy = Conv2d(bk, 1, 2, 3, padding=1, noise=GaussianNoise(bk, (2, 5, 5)))
    with pytest.raises(ValueError, match="noise layer expects input"):
        noisy.forward(np.zeros((1, 1, 6, 6)))


# --- shapes for any geometry (hypothesis) -------------------------------------------------------

geometry = st.tuples(
    st.integers(1, 3), st.integers(1, 3),                  # C_in, C_out
    st.integers(1, 4), st.integers(1, 4),                  # KH, KW
    st.integers(1, 3), st.integers(1, 3),                  # SH, SW
    st.integers(0, 2), st.integers(0, 2),                  # PH, PW
    st.integers(1, 8), st.integers(1, 8),                  # H, W
    st.integers(1, 3))                                     # N


@settings(max_examples=60, deadline=None)
@given(geometry)
def test_shapes_and_adjointness_for_any_geometry(g):
    c_in, c_out, kh, kw, sh, sw, ph, pw, h, w, n = g
    bk = get_backend("numpy", "float64", 0)
    if kh > h + 2 * ph or kw > w + 2 * pw:
        with pytest.raises(ValueError, match="larger than the padded input"):
            Conv2d(bk, c_in, c_out, (kh, kw), (sh, sw), (ph, pw)).forward(np.zeros((n, c_in, h, w)))
        return
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    conv = Conv2d(bk, c_in, c_out, (kh, kw), (sh, sw), (ph, pw))
    x = host_normal(0, (n, c_in, h, w))
    y = conv.forward(x)
    assert y.shape == (n, c_out, oh, ow) == (n, *conv.output_shape((c_in, h, w)))
    naive = conv2d_naive(x, conv.params["weight"], conv.params["bias"], (sh, sw), (ph, pw), np)
    np.testing.assert_allclose(y, naive, rtol=1e-12, atol=1e-12)
    assert conv.backward(np.ones_like(y)).shape == x.shape
    cols = im2col(x, (kh, kw), (sh, sw), (ph, pw), np)
    z = host_normal(1, cols.shape)
    lhs, rhs = float((cols * z).sum()), float((x * col2im(z, x.shape, (kh, kw), (sh, sw), (ph, pw), np)).sum())
    assert abs(lhs - rhs) <= 1e-12 * max(1.0, abs(lhs) + abs(rhs))
