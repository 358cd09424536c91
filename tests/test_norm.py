"""BatchNorm1d / BatchNorm2d and Normalize: float64 finite differences in training and evaluation
mode, running statistics as PyTorch keeps them, and clear errors."""
import numpy as np
import pytest

from manualbp.gradcheck import check_gradients
from manualbp.layers import BatchNorm1d, BatchNorm2d, Normalize

TOL = 1e-7
LAYOUTS = {"1d": (BatchNorm1d, (6, 4)), "2d": (BatchNorm2d, (4, 3, 3, 2))}


def host_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape)


def make_bn(bk, layout, seed=0):
    """A batch norm with non-trivial scale, shift and running statistics."""
    cls, x_shape = LAYOUTS[layout]
    features = x_shape[1]
    bn = cls(bk, features)
    bn.params["weight"][...] = bk.asarray(1 + 0.5 * host_normal(seed, (features,)))
    bn.params["bias"][...] = bk.asarray(host_normal(seed + 1, (features,)))
    bn.buffers["running_mean"][...] = bk.asarray(host_normal(seed + 2, (features,)))
    bn.buffers["running_var"][...] = bk.asarray(0.5 + host_normal(seed + 3, (features,)) ** 2)
    x = bk.asarray(2 + 3 * host_normal(seed + 4, x_shape))
    return bn, x


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_gradients(bk64, layout, training):
    bn, x = make_bn(bk64, layout)
    if not training:
        bn.eval()
    errors = check_gradients(bn, x)
    assert set(errors) == {"weight", "bias", "input"}
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batchnorm_training_statistics(bk64, layout):
    """Output has zero mean and unit (biased) variance per feature before the affine part; the
    running statistics move by momentum 0.1 towards the batch mean and unbiased variance."""
    bn, x = make_bn(bk64, layout)
    axes = (0,) + tuple(range(2, x.ndim))
    xh = bk64.to_host(x)
    rm0, rv0 = (bk64.to_host(bn.buffers[k]).copy() for k in ("running_mean", "running_var"))
    y = bk64.to_host(bn.forward(x))
    w, b = bk64.to_host(bn.params["weight"]), bk64.to_host(bn.params["bias"])
    shape = (1, -1) + (1,) * (x.ndim - 2)
    xhat = (y - b.reshape(shape)) / w.reshape(shape)
    np.testing.assert_allclose(xhat.mean(axis=axes), 0, atol=1e-12)
    mean, var = xh.mean(axis=axes), xh.var(axis=axes)
    np.testing.assert_allclose(xhat.var(axis=axes), var / (var + 1e-5), rtol=1e-12)
    n = xh.size // xh.shape[1]
    np.testing.assert_allclose(bk64.to_host(bn.buffers["running_mean"]), 0.9 * rm0 + 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(bk64.to_host(bn.buffers["running_var"]),
                               0.9 * rv0 + 0.1 * var * n / (n - 1), rtol=1e-12)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_batchnorm_matches_torch(bk64, layout, torch):
    """Forward, every gradient and the running statistics against torch.nn.functional.batch_norm."""
    F = torch.nn.functional
    for training in (True, False):
        bn, x = make_bn(bk64, layout, seed=5)
        if not training:
            bn.eval()
        host = {k: torch.tensor(bk64.to_host(v)) for k, v in bn.state_dict().items()}
        w = host["weight"].requires_grad_()
        b = host["bias"].requires_grad_()
        xt = torch.tensor(bk64.to_host(x), requires_grad=True)
        delta = host_normal(9, x.shape)
        yt = F.batch_norm(xt, host["running_mean"], host["running_var"], w, b, training=training,
                          momentum=0.1, eps=1e-5)
        yt.backward(torch.tensor(delta))
        y = bn.forward(x)
        dx = bn.backward(bk64.asarray(delta))
        pairs = [(y, yt), (dx, xt.grad), (bn.grads["weight"], w.grad), (bn.grads["bias"], b.grad),
                 (bn.buffers["running_mean"], host["running_mean"]),
                 (bn.buffers["running_var"], host["running_var"])]
        for ours, theirs in pairs:
            np.testing.assert_allclose(bk64.to_host(ours), theirs.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_batchnorm_no_input_grad_and_float32(bk32):
    bn = BatchNorm2d(bk32, 3)
    x = bk32.asarray(host_normal(0, (2, 3, 4, 4)))
    y = bn.forward(x)
    assert y.dtype == bk32.dtype and bn.buffers["running_var"].dtype == bk32.dtype
    assert bn.backward(bk32.asarray(host_normal(1, y.shape)), input_grad=False) is None
    assert bn.grads["weight"].dtype == bk32.dtype and bn.grads["weight"].shape == (3,)
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_batchnorm_errors(bk64):
    with pytest.raises(ValueError, match=r"BatchNorm2d\(3\) expects input \(N, C, H, W\) with 3 at axis 1, got \(2, 4, 5, 5\)"):
        BatchNorm2d(bk64, 3).forward(bk64.zeros((2, 4, 5, 5)))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\) expects input \(N, F\)"):
        BatchNorm1d(bk64, 3).forward(bk64.zeros((2, 3, 1, 1)))
    with pytest.raises(ValueError, match="more than one value per feature"):
        BatchNorm1d(bk64, 3).forward(bk64.zeros((1, 3)))
    bn = BatchNorm1d(bk64, 3).eval()
    assert bn.forward(bk64.zeros((1, 3))).shape == (1, 3)      # evaluation needs no batch


# --- Normalize -------------------------------------------------------------------------------

def test_normalize_gradients_and_values(bk64):
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    layer = Normalize(bk64, mean, std)
    x_h = np.random.default_rng(0).random((2, 3, 4, 4))
    y = bk64.to_host(layer.forward(bk64.asarray(x_h)))
    np.testing.assert_allclose(y, (x_h - np.reshape(mean, (1, 3, 1, 1))) / np.reshape(std, (1, 3, 1, 1)))
    errors = check_gradients(layer, bk64.asarray(x_h))
    assert errors == {"input": errors["input"]} and errors["input"] < TOL
    assert set(layer.state_dict()) == {"mean", "std"} and not layer.params


def test_normalize_errors(bk64):
    with pytest.raises(ValueError, match="one mean and one std per channel, got 3 means and 2 stds"):
        Normalize(bk64, (0, 0, 0), (1, 1))
    with pytest.raises(ValueError, match="every std must be positive"):
        Normalize(bk64, (0,), (0,))
    with pytest.raises(ValueError, match=r"expects input \(N, 3, ...\), got \(2, 1, 4, 4\)"):
        Normalize(bk64, (0, 0, 0), (1, 1, 1)).forward(bk64.zeros((2, 1, 4, 4)))
