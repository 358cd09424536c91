"""Optimisers: Adam with L2 weight decay, SGD with momentum, the noise-level update of Eq. (7),
and a step learning-rate schedule.

An optimiser updates a chosen set of a model's parameters in place, by name. Its state
(moments, step count) is a dict of named arrays, so checkpoints store it without pickle.
"""
from .parallel import parallel_blocks


def is_noise_level(name):
    """Whether a parameter name is a noise level ``sigma`` (updated by Eq. 7, not by the weights')."""
    return name.rsplit(".", 1)[-1] == "sigma"


class Optimizer:
    """Base: updates the parameters of ``model`` whose full names pass ``select(name)``.

    It gathers those parameters, and their gradients, into one contiguous array each and makes
    the layers' arrays views of them, so one update is a few whole-array operations however many
    layers there are (the layers keep writing their gradients in place, as always). A subclass
    writes ``update(part)`` for the slice ``part`` of those flat arrays; a large update runs as
    several parts on threads (every operation is element-wise, so the result is the same).
    """

    state_names = ()   # the per-parameter state arrays ``update`` uses (moments, momentum)

    def __init__(self, model, lr, select=None):
        self.bk, self.xp = model.bk, model.xp
        self.lr = lr
        slots = [s for s in model.parameter_slots() if select is None or select(s[0])]
        if not slots:
            raise ValueError("optimiser was given no parameters to update")
        self.names = [name for name, _, _ in slots]
        self.param = self._gather(slots, "params")
        self.grad = self._gather(slots, "grads")
        self.scratch = self.xp.empty_like(self.param)
        self.t = 0
        self.state = {}

    def _gather(self, slots, kind):
        """One flat array holding every ``module.<kind>[key]``, which become views of it."""
        flat = self.bk.zeros((sum(int(m.params[k].size) for _, m, k in slots),))
        offset = 0
        for _, module, key in slots:
            old = getattr(module, kind)[key]
            view = flat[offset:offset + old.size].reshape(old.shape)
            view[...] = old
            getattr(module, kind)[key] = view
            offset += old.size
        return flat

    def _decayed_grad(self, part, weight_decay):
        """``g + weight_decay * p`` (L2 weight decay), or ``g`` itself when there is none."""
        if not weight_decay:
            return self.grad[part]
        g = self.xp.multiply(self.param[part], weight_decay, out=self.scratch[part])
        g += self.grad[part]
        return g

    def step(self):
        self.t += 1
        for name in self.state_names:
            if name not in self.state:
                self.state[name] = self.xp.zeros_like(self.param)
        size = self.param.size
        parallel_blocks(self.xp, size, 1, size, lambda part, _: self.update(part))

    def update(self, part):
        raise NotImplementedError

    def state_dict(self):
        return {"t": self.t, "lr": self.lr, **self.state}

    def load_state_dict(self, state):
        """Restore ``t``, ``lr`` and copies of the state arrays (never aliases of ``state``'s,
        which may be another optimiser's live buffers)."""
        arrays = {k: v for k, v in state.items() if k not in ("t", "lr")}
        for k, v in arrays.items():
            if tuple(v.shape) != tuple(self.param.shape):
                raise ValueError(f"optimiser state {k!r}: expected shape {tuple(self.param.shape)}, "
                                 f"got {tuple(v.shape)}")
        self.t, self.lr = int(state["t"]), float(state["lr"])
        self.state = {k: self.xp.array(v, dtype=self.bk.dtype) for k, v in arrays.items()}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient (PyTorch's ``Adam``).

    With ``keep_positive=True`` the update ends with an absolute value: this is the noise-level
    update of Eq. (7), ``sigma <- |sigma - lr * h_hat / (sqrt(v_hat) + eps)|``.
    """

    state_names = ("m", "v")

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 keep_positive=False, select=None):
        super().__init__(model, lr, select)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay, self.keep_positive = eps, weight_decay, keep_positive
        self.work = self.xp.empty_like(self.param)

    def update(self, part):
        xp, b1, b2, s = self.xp, self.beta1, self.beta2, self.work[part]
        p, g = self.param[part], self._decayed_grad(part, self.weight_decay)
        h, v = self.state["m"][part], self.state["v"][part]
        h *= b1
        h += xp.multiply(g, 1 - b1, out=s)                         # h <- b1 h + (1 - b1) g, Eq. (7)
        v *= b2
        v += xp.multiply(xp.multiply(g, g, out=s), 1 - b2, out=s)  # v <- b2 v + (1 - b2) g^2, Eq. (7)
        h_hat_scale = 1 / (1 - b1 ** self.t)                        # h_hat = h / (1 - b1^N)
        v_hat_scale = 1 / (1 - b2 ** self.t)                        # v_hat = v / (1 - b2^N)
        denom = xp.sqrt(xp.multiply(v, v_hat_scale, out=s), out=s)
        denom += self.eps                                           # sqrt(v_hat) + eps
        step = xp.divide(h, denom, out=s)
        step *= self.lr * h_hat_scale                               # alpha * h_hat / (sqrt(v_hat) + eps)
        p -= step
        if self.keep_positive:
            xp.abs(p, out=p)                                        # sigma <- |sigma - step|, Eq. (7)


class SGD(Optimizer):
    """SGD with momentum and L2 weight decay (PyTorch's ``SGD`` semantics)."""

    def __init__(self, model, lr=1e-2, momentum=0.9, weight_decay=0.0, select=None):
        super().__init__(model, lr, select)
        self.momentum, self.weight_decay = momentum, weight_decay
        self.state_names = ("momentum",) if momentum else ()

    def update(self, part):
        g = self._decayed_grad(part, self.weight_decay)
        if self.momentum:
            buf = self.state["momentum"][part]
            buf *= self.momentum
            buf += g                                                # b <- momentum b + g
            g = buf
        self.param[part] -= self.xp.multiply(g, self.lr, out=self.scratch[part])   # p <- p - lr b


def noise_level_optimizer(model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """The update of Eq. (7) for every learned ``sigma`` of ``model`` (``None`` if it has none)."""
    if not any(is_noise_level(name) for name, _, _ in model.parameter_slots()):
        return None
    return Adam(model, lr, betas, eps, keep_positive=True, select=is_noise_level)


class StepLR:
    """Multiply each optimiser's learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, optimizers, step_size, gamma):
        self.optimizers = [o for o in optimizers if o is not None]
        self.step_size, self.gamma = step_size, gamma
        self.base = [o.lr for o in self.optimizers]

    def set_epoch(self, epoch):
        """Set the rates for ``epoch`` (0-based): ``base * gamma ** (epoch // step_size)``."""
        for opt, base in zip(self.optimizers, self.base):
            opt.lr = base * self.gamma ** (epoch // self.step_size)
