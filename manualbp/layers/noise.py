"""Gaussian noise on neurons: the noise term ``z = mu + sigma * eps`` of Eq. (1), and Eq. (3)."""
from ..ops import gaussian_noise
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
    released : (learned noise) the paper's released code exactly as it runs: ``sigma`` drawn
        from N(0, 1), ``|sigma|`` in the forward pass, and Eq. (3) *without* the factor
        ``sign(sigma)`` that the derivative of ``|sigma|`` needs -- a wrong gradient for every
        negative ``sigma``, kept to reproduce where the paper's numbers come from.

    After ``forward``, ``eps`` holds the last draw (``None`` when no noise was drawn). While
    ``hold_eps`` is true, forward reuses that draw instead of drawing anew (gradient checks,
    parity tests). Runs the op :data:`~manualbp.ops.gaussian_noise`.
    """

    op = gaussian_noise

    def __init__(self, bk, shape, mode="learned", sigma0=1.0, learn_mean=False, eval_noise=False,
                 abs_sigma=False, released=False):
        super().__init__(bk)
        if mode not in NOISE_MODES:
            raise ValueError(f"unknown noise mode {mode!r}: expected one of {', '.join(NOISE_MODES)}")
        self.shape = tuple(int(s) for s in shape)
        self.mode = mode
        self.eval_noise = eval_noise
        self.released = released and mode == "learned"
        self.abs_sigma = abs_sigma or self.released
        self.hold_eps = False
        self.eps = None
        if mode != "off":
            sigma = bk.normal(self.shape) if self.released else bk.full(self.shape, sigma0)
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

    def noise_level(self):
        """``sigma`` as the forward pass uses it: ``|sigma|`` with ``abs_sigma``."""
        return self.xp.abs(self.sigma) if self.abs_sigma else self.sigma

    def check(self, v):
        if tuple(v.shape[1:]) != self.shape:
            raise ValueError(f"noise layer expects input (N, {', '.join(map(str, self.shape))}), "
                             f"got {tuple(v.shape)}")

    def array(self, key):
        if key == "eps":
            return self.eps if self.draws else None
        return super().array(key)

    def settings(self, training):
        return {"abs_sigma": self.abs_sigma, "released": self.released}

    def forward(self, v):
        """Draw ``eps`` (unless held), then ``v + sigma * eps (+ mu)``."""
        self.check(v)
        if self.draws:
            if not (self.hold_eps and self.eps is not None and self.eps.shape == v.shape):
                self.eps = self.bk.normal_like(v)                      # eps ~ N(0, 1), Eq. (1)
        elif not self.hold_eps:
            self.eps = None
        return super().forward(v)
