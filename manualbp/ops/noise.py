"""``gaussian_noise``: the noise term ``z = sigma * eps (+ mu)`` of Eq. (1), and Eq. (3)."""
from ..parallel import parallel_blocks
from .base import Op, destination, filled, put


def noise_forward(xp, v, sigma, mu, eps, abs_sigma=False, released=False):
    """``v + sigma * eps (+ mu)``: ``v`` and ``eps`` ``(N, *shape)``, ``sigma`` and ``mu`` the
    neuron shape; ``eps`` is ``None`` when no noise is drawn, ``mu`` when there is no mean.
    ``abs_sigma``: ``|sigma|`` in place of ``sigma``; ``released``: its gradient then leaves out
    ``sign(sigma)``, as the paper's released code does."""
    if eps is not None:
        level = xp.abs(sigma) if abs_sigma else sigma
        v = v + level * eps                                  # v + z, z = sigma * eps, Eq. (1)
    if mu is not None:
        v = v + mu                                           # + mu
    return v, (sigma, eps, abs_sigma and not released)


def noise_backward(xp, delta, cache, need):
    """``delta`` passes through (``dv/dz = 1``); ``dL/dsigma = sum_n delta * eps`` (Eq. 3),
    ``dL/dmu = sum_n delta``."""
    sigma, eps, signed = cache
    d_sigma = d_mu = None
    if need[1] is not None:
        d_sigma = (delta * eps).sum(axis=0) if eps is not None else xp.zeros_like(sigma)   # Eq. (3)
        if signed:
            d_sigma = d_sigma * xp.sign(sigma)               # d|sigma| / dsigma
    if need[2] is not None:
        d_mu = delta.sum(axis=0)
    return (delta if need[0] else None), d_sigma, d_mu, None


gaussian_noise = Op("gaussian_noise", ("v", "sigma", "mu", "eps"), noise_forward, noise_backward)


def noise_forward_fast(xp, v, sigma, mu, eps, abs_sigma=False, released=False):
    """The reference's output in ``v``'s memory layout, block by block of channels on the
    thread pool (in one piece on CuPy)."""
    if eps is None:
        out = v if mu is None else xp.add(v, mu, out=xp.empty_like(v))       # v + mu, in v's layout
        return out, (sigma, None, abs_sigma and not released)
    level, out = (xp.abs(sigma) if abs_sigma else sigma), xp.empty_like(v)

    def add_noise(cs, ns):                                   # a block of channels, of samples
        o = out[ns, cs]
        xp.multiply(level[cs], eps[ns, cs], out=o)           # z = sigma * eps, Eq. (1)
        o += v[ns, cs]                                       # v + z
        if mu is not None:
            o += mu[cs]                                      # + mu

    parallel_blocks(xp, sigma.shape[0], len(v), v.size, add_noise)
    return out, (sigma, eps, abs_sigma and not released)


def _batch_sum_einsum(xp, a, b, out):
    """``sum_n a[n] * b[n]`` (or ``sum_n a[n]`` when ``b`` is None) in one ``einsum`` pass."""
    total = xp.einsum("n...->...", a) if b is None else xp.einsum("n...,n...->...", a, b)
    if out is None:
        return total
    out[...] = total
    return out


def _batch_sum_in_layout(xp, a, b, out):
    """The same as a product in ``a``'s layout and a reduction (CuPy's ``einsum`` would copy
    both operands into the order of a batched matrix product)."""
    if b is not None:
        a = xp.multiply(a, b, out=xp.empty_like(a))
    return a.sum(axis=0, out=out)


def _noise_backward_with(batch_sum):
    def backward(xp, delta, cache, need):
        sigma, eps, signed = cache
        d_sigma = d_mu = None
        if need[1] is not None:
            if eps is None:
                d_sigma = put(need[1], xp.zeros_like(sigma))
            else:
                d_sigma = filled(need[1], batch_sum(xp, delta, eps, destination(need[1])))   # Eq. (3)
                if signed:
                    d_sigma *= xp.sign(sigma)
        if need[2] is not None:
            d_mu = filled(need[2], batch_sum(xp, delta, None, destination(need[2])))
        return (delta if need[0] else None), d_sigma, d_mu, None
    backward.__doc__ = f"The reference's gradients, each batch sum by ``{batch_sum.__name__}`` in place."
    return backward


gaussian_noise.kernel("numpy", noise_forward_fast, _noise_backward_with(_batch_sum_einsum))
gaussian_noise.kernel("cupy", noise_forward_fast, _noise_backward_with(_batch_sum_in_layout))


@gaussian_noise.rule("torch")
@gaussian_noise.rule("jax")
def noise_rule(v, sigma, mu, eps, abs_sigma=False, released=False):
    """``v + sigma * eps (+ mu)`` with the engine's draw, in any framework (its own ``abs``)."""
    if eps is not None:
        v = v + (abs(sigma) if abs_sigma else sigma) * eps             # z = sigma * eps, Eq. (1)
    return v if mu is None else v + mu
