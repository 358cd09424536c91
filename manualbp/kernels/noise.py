"""The fast noise layer: :class:`~manualbp.layers.noise.GaussianNoise` with its draws in the
feature map's memory layout, the arithmetic on threads and Eq. (3) in one pass."""
from ..layers.noise import GaussianNoise
from ..parallel import parallel_blocks


class GaussianNoiseKernel(GaussianNoise):
    """What :class:`~manualbp.layers.noise.GaussianNoise` computes, faster.

    ``eps`` is drawn into one buffer per layer, kept in the memory layout of the ``v`` it
    perturbs (``Backend.normal`` fills any dense buffer in storage order): the draws of a
    C-ordered ``v`` (dense layers) are those of the reference layer; those of a batch-innermost
    feature map (:class:`~manualbp.kernels.conv.Conv2dKernel`) are the same distribution in
    another order, as are those of a channel-major one on CuPy
    (:mod:`~manualbp.kernels.channel_major`). ``v + sigma * eps + mu`` runs block by block of
    channels on the thread pool (in one piece on CuPy); Eq. (3), ``sum_n delta * eps``, is one
    ``einsum`` (on CuPy a product and a sum, :class:`~manualbp.kernels.channel_major.GaussianNoiseInLayout`),
    written in place.
    """

    def forward(self, v):
        self.check(v)
        xp, out = self.xp, v
        mu = self.params.get("mu")
        if self.draws:
            if not (self.hold_eps and self.eps is not None and self.eps.shape == v.shape):
                if self.eps is None or self.eps.shape != v.shape or self.eps.strides != v.strides:
                    self.eps = xp.empty_like(v)                    # in v's memory layout
                self.eps = self.bk.normal(v.shape, out=self.eps)   # eps ~ N(0, 1), Eq. (1)
            sigma, eps, out = self.noise_level(), self.eps, xp.empty_like(v)

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
                out = xp.add(v, mu, out=xp.empty_like(v))          # v + mu, in v's layout
        return out

    def sum_over_batch(self, a, b, out):
        """``out = sum_n a[n] * b[n]``, or ``sum_n a[n]`` when ``b`` is None: one ``einsum`` pass."""
        if b is None:
            out[...] = self.xp.einsum("n...->...", a)
        else:
            out[...] = self.xp.einsum("n...,n...->...", a, b)

    def backward(self, delta, input_grad=True):
        if not self.param_grads:
            return delta
        if "sigma" in self.params:
            grad_sigma = self.grads["sigma"]
            if self.draws:
                self.sum_over_batch(delta, self.eps, grad_sigma)             # Eq. (3)
                if self.abs_sigma and not self.released:
                    grad_sigma *= self.xp.sign(self.params["sigma"])
            else:
                grad_sigma[...] = 0
        if "mu" in self.params:
            self.sum_over_batch(delta, None, self.grads["mu"])
        return delta
