"""One reference solution per exercise of :mod:`manualbp.course.exercises`, same names and
signatures, in plain NumPy. The chapters never import this module: try first, then compare."""
import numpy as np


def linear_backward(x, weight, delta):
    """``v = x weight^T + b``: ``dx = delta weight`` (Eq. 2), ``dw = delta^T x``, ``db = sum_n delta``."""
    return delta @ weight, delta.T @ x, delta.sum(axis=0)


def noise_backward(delta, eps):
    """Eq. (3): ``dL/dsigma = sum_n delta * eps``, one entry per neuron."""
    return (delta * eps).sum(axis=0)


def sigma_update(sigma, grad, m, v, t, lr, beta1, beta2, adam_eps):
    """Eq. (7): Adam's moments and bias corrections at step ``t``, then ``sigma <- |sigma - step|``."""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad * grad
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    sigma = np.abs(sigma - lr * m_hat / (np.sqrt(v_hat) + adam_eps))
    return sigma, m, v


def col2im(cols, x_shape, kernel_size, stride, padding):
    """Add every column entry back to the pixel it was copied from, then drop the padding."""
    n, c, h, w = x_shape
    k, s, p = kernel_size, stride, padding
    out_h, out_w = cols.shape[4], cols.shape[5]
    x_pad = np.zeros((n, c, h + 2 * p, w + 2 * p), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            # kernel offset (i, j) of the window at (oh, ow) saw padded pixel (oh s + i, ow s + j)
            x_pad[:, :, i:i + s * out_h:s, j:j + s * out_w:s] += cols[:, :, i, j]
    return x_pad[:, :, p:p + h, p:p + w]


def batchnorm_backward(delta, xhat, inv_std, weight):
    """``dx = weight inv_std (delta - mean_n delta - xhat mean_n(delta xhat))``."""
    dweight = (delta * xhat).sum(axis=0)
    dbias = delta.sum(axis=0)
    n = delta.shape[0]
    dx = weight * inv_std * (delta - (dbias + xhat * dweight) / n)
    return dx, dweight, dbias


def concat_backward(delta, sizes, axis):
    """Input ``i`` receives the slice of ``delta`` it became."""
    return np.split(delta, np.cumsum(sizes)[:-1], axis=axis)


def pathwise_sigma_grad(a, sigma, eps):
    """``d relu(a + sigma eps) / d sigma = 1[a + sigma eps > 0] * eps``, per sample."""
    return (a + sigma * eps > 0) * eps


def fgsm(x, grad, epsilon):
    """``clip(x + epsilon sign(grad), 0, 1)``."""
    return np.clip(x + epsilon * np.sign(grad), 0, 1)
