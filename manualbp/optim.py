"""Optimisers: Adam with L2 weight decay, SGD with momentum, the noise-level update of Eq. (7),
and a step learning-rate schedule.

An optimiser updates a chosen set of a model's parameters in place, parameter by parameter. Its
state (moments, step count) is named arrays, so checkpoints store it without pickle. Building one
builds what the model's backend asks for (:meth:`Backend.implementation`): with
``kernels="fast"``, the flat kernel of :mod:`manualbp.kernels.optim`.
"""
from .store import is_noise_level

__all__ = ["Adam", "Optimizer", "SGD", "SIGMA_LR", "StepLR", "is_noise_level", "noise_level_optimizer"]


class Optimizer:
    """Base: updates the parameters of ``model`` whose full names pass ``select(name)``.

    A subclass names its per-parameter state arrays in ``state_names`` and writes
    ``update(name, p, g)``, the step of one parameter ``p`` (changed in place) with gradient ``g``.
    """

    state_names = ()   # the per-parameter state arrays ``update`` uses (moments, momentum)

    def __new__(cls, model, *args, **kwargs):
        return super().__new__(model.bk.implementation(cls))

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

    def step(self):
        self.t += 1
        for name, module, key in self.slots:
            self.update(name, module.params[key], module.grads[key])

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
