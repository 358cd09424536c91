"""Fast optimisers: :class:`~manualbp.optim.Adam` and :class:`~manualbp.optim.SGD` on the
model's parameter store (:class:`~manualbp.store.ParameterStore`), a few whole-array operations
per step however many layers there are, in place and on threads.

After each step the kernels flush subnormal parameters to zero. Weights whose gradient is only
their own weight decay (a pixel that is always blank) shrink geometrically under Adam and pass
through the subnormal range (below 1.2e-38 in float32) on their way to zero; BLAS multiplies a
subnormal some hundred times slower: 4 % of them made a 128x784 @ 784x100 product 8x slower,
and the 14 % that a plain MLP's first layer reached in adversarial training 60x. Their values
are round-off of zero: flushing them changes no result beyond it (``tests/test_kernels.py``)."""
from ..optim import SGD, Adam
from ..parallel import parallel_blocks


class _FlatKernel:
    """Steps the optimiser's span of the model's flat parameter store at once (mixed in before
    the optimiser). Its state arrays are views of flat arrays laid out like the store, so
    ``state_dict`` is the reference's. A selection that is not one contiguous span of the store
    is updated parameter by parameter, as the reference does, and then flushed."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        self.store = model.parameter_store()
        self.span = self.store.span(self.names)
        self.tiny = self.xp.finfo(self.store.param.dtype).tiny          # the smallest normal number
        if self.span is None:
            return
        self.param, self.grad = self.store.param[self.span], self.store.grad[self.span]
        self.scratch, self.work = self.xp.empty_like(self.param), self.xp.empty_like(self.param)
        self.normal = self.xp.empty(self.param.shape, dtype=bool)
        self.flat_state = {s: self.xp.zeros_like(self.param) for s in self.state_names}
        for s, flat in self.flat_state.items():
            for name in self.names:
                lo = self.store.offsets[name] - self.span.start
                self.state[s][name] = flat[lo:lo + self.store.sizes[name]].reshape(self.state[s][name].shape)

    def step(self):
        if self.span is None:
            super().step()
            for _, module, key in self.slots:
                p = module.params[key]
                self._flush(p, self.xp.empty_like(p), self.xp.empty(p.shape, dtype=bool))
            return
        self.t += 1
        self.store.gather(self.names)
        size = self.param.size
        parallel_blocks(self.xp, size, 1, size, lambda part, _: self._update_and_flush(part))

    def _update_and_flush(self, part):
        """The update of ``part``, then its subnormal parameters set to zero (module docstring)."""
        self.update_part(part)
        self._flush(self.param[part], self.work[part], self.normal[part])

    def _flush(self, p, work, normal):
        """Set the subnormal entries of ``p`` to zero (``work``, ``normal``: scratch arrays of its
        shape, float and bool)."""
        self.xp.greater_equal(self.xp.abs(p, out=work), self.tiny, out=normal)
        p *= normal

    def _decayed_grad(self, part):
        """``g + weight_decay * p`` (L2 weight decay), or ``g`` itself when there is none."""
        if not self.weight_decay:
            return self.grad[part]
        g = self.xp.multiply(self.param[part], self.weight_decay, out=self.scratch[part])
        g += self.grad[part]
        return g


class AdamKernel(_FlatKernel, Adam):
    """What :class:`~manualbp.optim.Adam` computes (Eq. 7 with ``keep_positive``), faster."""

    def update_part(self, part):
        xp, b1, b2, s = self.xp, self.beta1, self.beta2, self.work[part]
        p, g = self.param[part], self._decayed_grad(part)
        h, v = self.flat_state["m"][part], self.flat_state["v"][part]
        h *= b1
        h += xp.multiply(g, 1 - b1, out=s)                         # h <- b1 h + (1 - b1) g
        v *= b2
        v += xp.multiply(xp.multiply(g, g, out=s), 1 - b2, out=s)  # v <- b2 v + (1 - b2) g^2
        denom = xp.sqrt(xp.multiply(v, 1 / (1 - b2 ** self.t), out=s), out=s)
        denom += self.floor                                         # sqrt(v_hat) + floor
        step = xp.divide(h, denom, out=s)
        step *= self.lr / (1 - b1 ** self.t)                        # alpha * h_hat / (sqrt(v_hat) + floor)
        p -= step
        if self.keep_positive:
            xp.abs(p, out=p)                                        # Eq. (7)


class SGDKernel(_FlatKernel, SGD):
    """What :class:`~manualbp.optim.SGD` computes, faster."""

    def update_part(self, part):
        g = self._decayed_grad(part)
        if self.momentum:
            buf = self.flat_state["momentum"][part]
            buf *= self.momentum
            buf += g
            g = buf
        self.param[part] -= self.xp.multiply(g, self.lr, out=self.scratch[part])
