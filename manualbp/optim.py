"""Optimisers: Adam with L2 weight decay, SGD with momentum, the noise-level update of Eq. (7),
and a step learning-rate schedule.

An optimiser updates a chosen set of a model's parameters in place. Its state (moments, step
count) is named arrays, so checkpoints store it without pickle. Two paths, one truth: with the
backend's ``kernels="reference"`` each parameter takes the plain update :meth:`update`; with
``"fast"`` the optimiser's span of the model's flat parameter store
(:class:`~manualbp.store.ParameterStore`) takes :meth:`update_part`, a few whole-array
operations per step however many layers there are, in place and on threads.

After each fast step subnormal parameters are flushed to zero. Weights whose gradient is only
their own weight decay (a pixel that is always blank) shrink geometrically under Adam and pass
through the subnormal range (below 1.2e-38 in float32) on their way to zero; BLAS multiplies a
subnormal some hundred times slower: 4 % of them made a 128x784 @ 784x100 product 8x slower,
and the 14 % that a plain MLP's first layer reached in adversarial training 60x. Their values
are round-off of zero: flushing them changes no result beyond it (``tests/test_kernels.py``).
"""
from .parallel import parallel_blocks
from .store import is_noise_level

__all__ = ["Adam", "Optimizer", "SGD", "SIGMA_LR", "StepLR", "is_noise_level", "noise_level_optimizer"]


class Optimizer:
    """Base: updates the parameters of ``model`` whose full names pass ``select(name)``.

    A subclass names its per-parameter state arrays in ``state_names`` and writes
    ``update(name, p, g)``, the step of one parameter ``p`` (changed in place) with gradient ``g``
    (the reference), and ``update_part(part)``, the same step on the slice ``part`` of its span
    of the flat store (the fast path).
    """

    state_names = ()   # the per-parameter state arrays ``update`` uses (moments, momentum)

    def __init__(self, model, lr, select=None):
        self.model, self.bk, self.xp = model, model.bk, model.xp
        self.lr = lr
        self.slots = [s for s in model.parameter_slots() if select is None or select(s[0])]
        if not self.slots:
            raise ValueError("optimiser was given no parameters to update")
        self.names = [name for name, _, _ in self.slots]
        self.t = 0
        self.state = {s: {name: self.xp.zeros_like(module.params[key]) for name, module, key in self.slots}
                      for s in self.state_names}
        self.span = None
        if self.bk.kernels == "fast":
            self.flatten_state()

    def flatten_state(self):
        """The fast path's set-up: the span of the model's store that the selection occupies
        (``None`` when it is not one contiguous run: then the fast path steps parameter by
        parameter, and flushes), scratch arrays, and the state as views of flat arrays laid out
        like the store (so ``state_dict`` is the reference's)."""
        store = self.model.parameter_store()
        self.tiny = self.xp.finfo(store.param.dtype).tiny              # the smallest normal number
        self.span = store.span(self.names)
        if self.span is None:
            return
        self.param, self.grad = store.param[self.span], store.grad[self.span]
        self.scratch, self.work = self.xp.empty_like(self.param), self.xp.empty_like(self.param)
        self.normal = self.xp.empty(self.param.shape, dtype=bool)
        self.flat_state = {s: self.xp.zeros_like(self.param) for s in self.state_names}
        for s, flat in self.flat_state.items():
            for name in self.names:
                lo = store.offsets[name] - self.span.start
                self.state[s][name] = flat[lo:lo + store.sizes[name]].reshape(self.state[s][name].shape)

    def step(self):
        """One update of every selected parameter: :meth:`update_part` on the flat span (fast),
        else :meth:`update` parameter by parameter (reference; the fast path then flushes)."""
        self.t += 1
        if self.span is not None:
            size = self.param.size
            parallel_blocks(self.xp, size, 1, size, lambda part, _: self._update_and_flush(part))
            return
        for name, module, key in self.slots:
            self.update(name, module.params[key], module.grads[key])
            if self.bk.kernels == "fast":
                p = module.params[key]
                self._flush(p, self.xp.empty_like(p), self.xp.empty(p.shape, dtype=bool))

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

    def update(self, name, p, g):
        raise NotImplementedError

    def state_dict(self):
        """``t``, ``lr`` and every state array as ``"<state>/<parameter name>"``."""
        return {"t": self.t, "lr": self.lr,
                **{f"{s}/{name}": a for s, arrays in self.state.items() for name, a in arrays.items()}}

    def load_state_dict(self, state):
        """Restore ``t``, ``lr`` and the state arrays (copied in: never aliases of ``state``'s,
        which may be another optimiser's live buffers)."""
        expected = {f"{s}/{name}": a for s, arrays in self.state.items() for name, a in arrays.items()}
        given = set(state) - {"t", "lr"}
        if given != set(expected):
            raise ValueError(f"optimiser state holds {sorted(given)}, expected {sorted(expected)}")
        for key, array in expected.items():
            if tuple(state[key].shape) != tuple(array.shape):
                raise ValueError(f"optimiser state {key!r}: expected shape {tuple(array.shape)}, "
                                 f"got {tuple(state[key].shape)}")
            array[...] = self.bk.asarray(state[key])
        self.t, self.lr = int(state["t"]), float(state["lr"])


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient (PyTorch's ``Adam``).

    With ``keep_positive=True`` the update ends with an absolute value: this is the noise-level
    update of Eq. (7), ``sigma <- |sigma - lr * h_hat / (sqrt(v_hat) + floor)|``. ``floor`` is
    the constant the paper writes as Adam's epsilon (1e-8); here ``eps`` is always the noise draw.
    """

    state_names = ("m", "v")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), floor=1e-8, weight_decay=0.0,
                 keep_positive=False, select=None):
        super().__init__(model, lr, select)
        self.beta1, self.beta2 = betas
        self.floor, self.weight_decay, self.keep_positive = floor, weight_decay, keep_positive

    def update(self, name, p, g):
        b1, b2, h, v = self.beta1, self.beta2, self.state["m"][name], self.state["v"][name]
        g = g + self.weight_decay * p                          # L2 weight decay
        h[...] = b1 * h + (1 - b1) * g                         # h <- b1 h + (1 - b1) g, Eq. (7)
        v[...] = b2 * v + (1 - b2) * g * g                     # v <- b2 v + (1 - b2) g^2, Eq. (7)
        h_hat = h / (1 - b1 ** self.t)                         # h_hat = h / (1 - b1^N), Eq. (7)
        v_hat = v / (1 - b2 ** self.t)                         # v_hat = v / (1 - b2^N), Eq. (7)
        p -= self.lr * h_hat / (self.xp.sqrt(v_hat) + self.floor)  # alpha h_hat / (sqrt(v_hat) + floor), Eq. (7)
        if self.keep_positive:
            p[...] = self.xp.abs(p)                            # sigma <- |sigma - step|, Eq. (7)

    def update_part(self, part):
        """The same step on ``part`` of the flat span, in place."""
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


class SGD(Optimizer):
    """SGD with momentum and L2 weight decay (PyTorch's ``SGD`` semantics)."""

    def __init__(self, model, lr=1e-2, momentum=0.9, weight_decay=0.0, select=None):
        self.state_names = ("momentum",) if momentum else ()
        super().__init__(model, lr, select)
        self.momentum, self.weight_decay = momentum, weight_decay

    def update(self, name, p, g):
        g = g + self.weight_decay * p                          # L2 weight decay
        if self.momentum:
            b = self.state["momentum"][name]
            b[...] = self.momentum * b + g                     # b <- momentum b + g
            g = b
        p -= self.lr * g                                       # p <- p - lr b

    def update_part(self, part):
        """The same step on ``part`` of the flat span, in place."""
        g = self._decayed_grad(part)
        if self.momentum:
            buf = self.flat_state["momentum"][part]
            buf *= self.momentum
            buf += g
            g = buf
        self.param[part] -= self.xp.multiply(g, self.lr, out=self.scratch[part])


#: The learning rate of Eq. (7), the paper's.
SIGMA_LR = 1e-3


def noise_level_optimizer(model, lr=SIGMA_LR, betas=(0.9, 0.999), floor=1e-8):
    """The update of Eq. (7) for every learned ``sigma`` of ``model`` (``None`` if it has none)."""
    if not any(is_noise_level(name) for name, _, _ in model.parameter_slots()):
        return None
    return Adam(model, lr, betas, floor, keep_positive=True, select=is_noise_level)


class StepLR:
    """Multiply each optimiser's learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizers, step_size, gamma):
        if isinstance(step_size, bool) or int(step_size) != step_size or step_size < 1:
            raise ValueError(f"step_size must be a positive integer (epochs), got {step_size!r}")
        self.optimizers = [o for o in optimizers if o is not None]
        self.step_size, self.gamma = step_size, gamma
        self.base = [o.lr for o in self.optimizers]

    def set_epoch(self, epoch):
        """Set the rates for ``epoch`` (0-based): ``base * gamma ** (epoch // step_size)``."""
        for opt, base in zip(self.optimizers, self.base):
            opt.lr = base * self.gamma ** (epoch // self.step_size)
