"""Optimisers: Adam with L2 weight decay, SGD with momentum, the noise-level update of Eq. (7),
and a step learning-rate schedule.

An optimiser updates a chosen set of a model's parameters in place, by name. Its state
(moments, step count) is a dict of named arrays, so checkpoints store it without pickle.
"""


def is_noise_level(name):
    """Whether a parameter name is a noise level ``sigma`` (updated by Eq. 7, not by the weights')."""
    return name.rsplit(".", 1)[-1] == "sigma"


class Optimizer:
    """Base: holds ``(full name, module, local name)`` slots chosen by ``select(name)``."""

    def __init__(self, model, lr, select=None):
        self.bk, self.xp = model.bk, model.xp
        self.lr = lr
        self.slots = [s for s in model.parameter_slots() if select is None or select(s[0])]
        if not self.slots:
            raise ValueError("optimiser was given no parameters to update")
        self.t = 0
        self.state = {}

    @property
    def names(self):
        return [name for name, _, _ in self.slots]

    def _buffer(self, kind, name, like):
        key = f"{kind}.{name}"
        if key not in self.state:
            self.state[key] = self.xp.zeros_like(like)
        return self.state[key]

    def step(self):
        self.t += 1
        for name, module, key in self.slots:
            self.update(name, module.params[key], module.grads[key])

    def update(self, name, p, g):
        raise NotImplementedError

    def state_dict(self):
        return {"t": self.t, "lr": self.lr, **self.state}

    def load_state_dict(self, state):
        self.t, self.lr = int(state["t"]), float(state["lr"])
        self.state = {k: self.bk.asarray(v) for k, v in state.items() if k not in ("t", "lr")}


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient (PyTorch's ``Adam``).

    With ``keep_positive=True`` the update ends with an absolute value: this is the noise-level
    update of Eq. (7), ``sigma <- |sigma - lr * h_hat / (sqrt(v_hat) + eps)|``.
    """

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 keep_positive=False, select=None):
        super().__init__(model, lr, select)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay, self.keep_positive = eps, weight_decay, keep_positive

    def update(self, name, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        h = self._buffer("m", name, p)
        v = self._buffer("v", name, p)
        h *= self.beta1
        h += (1 - self.beta1) * g                                   # h <- b1 h + (1 - b1) g, Eq. (7)
        v *= self.beta2
        v += (1 - self.beta2) * (g * g)                             # v <- b2 v + (1 - b2) g^2, Eq. (7)
        h_hat_scale = 1 / (1 - self.beta1 ** self.t)                # h_hat = h / (1 - b1^N)
        v_hat_scale = 1 / (1 - self.beta2 ** self.t)                # v_hat = v / (1 - b2^N)
        step = (self.lr * h_hat_scale) * h / (self.xp.sqrt(v * v_hat_scale) + self.eps)
        if self.keep_positive:
            p[...] = self.xp.abs(p - step)                          # sigma <- |sigma - step|, Eq. (7)
        else:
            p -= step


class SGD(Optimizer):
    """SGD with momentum and L2 weight decay (PyTorch's ``SGD`` semantics)."""

    def __init__(self, model, lr=1e-2, momentum=0.9, weight_decay=0.0, select=None):
        super().__init__(model, lr, select)
        self.momentum, self.weight_decay = momentum, weight_decay

    def update(self, name, p, g):
        if self.weight_decay:
            g = g + self.weight_decay * p
        if self.momentum:
            buf = self._buffer("momentum", name, p)
            buf *= self.momentum
            buf += g
            g = buf
        p -= self.lr * g


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
