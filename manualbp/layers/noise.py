"""Gaussian noise on neurons: the noise term ``z = mu + sigma * eps`` of Eq. (1), and Eq. (3)."""
from ..parallel import parallel_blocks
from .base import Module

NOISE_MODES = ("off", "fixed", "learned")


class GaussianNoise(Module):
    """Adds ``z = mu + sigma * eps``, ``eps ~ N(0, 1)`` drawn per neuron and per sample (Eq. 1).

    Shapes: input and output ``(N, *shape)``; ``sigma`` and ``mu`` have the neuron shape
    ``shape`` -- ``(features,)`` after a dense layer, ``(C, H, W)`` on a feature map.

    Parameters
    ----------
    shape : neuron shape.
    mode : ``"off"`` (identity), ``"fixed"`` (``sigma`` a constant buffer: the paper's "+" models)
        or ``"learned"`` (``sigma`` a parameter trained by Eq. (3) and (7): the "N" models).
    sigma0 : initial (or fixed) noise level.
    learn_mean : also learn a mean ``mu`` (the paper's conv "bias").
    eval_noise : whether noise is still drawn in evaluation mode (the randomised model).
    abs_sigma : use ``|sigma|`` in the forward pass, as the paper's released code does when it
        trains ``sigma`` with the weights' own optimiser; the paper's Eq. (7) keeps ``sigma > 0``
        in the update instead, so this is off by default.

    After ``forward``, ``eps`` holds the last draw (``None`` when no noise was drawn). While
    ``hold_eps`` is true, forward reuses that draw instead of drawing anew (gradient checks,
    parity tests).
    """

    def __init__(self, bk, shape, mode="learned", sigma0=1.0, learn_mean=False, eval_noise=False,
                 abs_sigma=False):
        super().__init__(bk)
        if mode not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {mode!r}: expected one of {', '.join(NOISE_MODES)}")
        self.shape = tuple(int(s) for s in shape)
        self.mode = mode
        self.eval_noise = eval_noise
        self.abs_sigma = abs_sigma
        self.hold_eps = False
        self.eps = None
        if mode != "off":
            sigma = bk.full(self.shape, sigma0)
            if mode == "learned":
                self.add_param("sigma", sigma)
            else:
                self.buffers["sigma"] = sigma
        if learn_mean:
            self.add_param("mu", bk.zeros(self.shape))

    @property
    def draws(self):
        """Whether the next forward pass adds noise."""
        return self.mode != "off" and (self.training or self.eval_noise)

    @property
    def sigma(self):
        """The noise level as stored: the parameter (learned) or the buffer (fixed); ``None``
        when the mode is ``"off"``."""
        return self.params.get("sigma", self.buffers.get("sigma"))

    def _sigma(self):
        return self.xp.abs(self.sigma) if self.abs_sigma else self.sigma

    def forward(self, v):
        if tuple(v.shape[1:]) != self.shape:
            raise ValueError(f"noise layer expects input (N, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(v.shape)}")
        xp, out = self.xp, v
        mu = self.params.get("mu")
        if self.draws:
            if not (self.hold_eps and self.eps is not None and self.eps.shape == v.shape):
                if self.eps is None or self.eps.shape != v.shape or self.eps.strides != v.strides:
                    self.eps = xp.empty_like(v)                    # in v's memory layout
                self.eps = self.bk.normal(v.shape, out=self.eps)   # eps ~ N(0, 1), Eq. (1)
            sigma, eps, out = self._sigma(), self.eps, xp.empty_like(v)

            def add_noise(cs, ns):                                 # a block of channels, samples
                o = out[ns, cs]
                xp.multiply(sigma[cs], eps[ns, cs], out=o)         # z = sigma * eps, Eq. (1)
                o += v[ns, cs]                                     # v + z
                if mu is not None:
                    o += mu[cs]                                    # + mu

            parallel_blocks(xp, self.shape[0], len(v), v.size, add_noise)
        else:
            if not self.hold_eps:
                self.eps = None
            if mu is not None:
                out = v + mu
        return out

    def backward(self, delta, input_grad=True):
        """``delta`` passes through unchanged (``dv/dz = 1``); the noise parameters get
        ``dL/dsigma = sum_n delta * eps`` (Eq. 3) and ``dL/dmu = sum_n delta``."""
        xp = self.xp
        if not self.param_grads:
            return delta
        if "sigma" in self.params:
            grad_sigma = self.grads["sigma"]
            if self.eps is None:
                grad_sigma[...] = 0
            else:
                grad_sigma[...] = xp.einsum("n...,n...->...", delta, self.eps)   # Eq. (3), sum over n
                if self.abs_sigma:
                    grad_sigma *= xp.sign(self.params["sigma"])
        if "mu" in self.params:
            self.grads["mu"][...] = xp.einsum("n...->...", delta)
        return delta
