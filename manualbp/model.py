"""Containers: chain forward passes, and run Eq. (2) as a loop over the layers in reverse."""
from contextlib import contextmanager

from .layers.base import Module, backward_chain
from .layers.noise import GaussianNoise


class Sequential(Module):
    """Layers applied in order; ``backward`` walks them in reverse (Eq. 2) and returns ``dL/dx``.

    ``layers``: ``(name, layer)`` pairs (or a dict), e.g. ``[("fc1", Linear(...)), ("act1",
    ReLU(bk)), ...]``. ``input_shape`` (per sample, e.g. ``(784,)``), when given, makes ``forward``
    check its input: shape, dtype and finiteness -- the checks a top-level model needs.
    """

    def __init__(self, bk, layers, input_shape=None):
        super().__init__(bk)
        self.children.update(dict(layers))
        self.input_shape = None if input_shape is None else tuple(input_shape)

    def check_input(self, x):
        """Raise a clear error for input that is not an array of the backend, or of the wrong
        shape or dtype, or with NaN/inf values (a :meth:`~manualbp.backend.Backend.require`
        check: deferred on the GPU)."""
        if not isinstance(x, self.xp.ndarray):
            raise TypeError(f"model input must be an array of the backend ({self.bk.name}), got "
                            f"{type(x).__name__}; convert with backend.asarray(x)")
        expected = "(N, " + ", ".join(map(str, self.input_shape)) + ")"
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1:
            raise ValueError(f"model input must have shape {expected}, got {tuple(x.shape)}")
        if x.dtype != self.bk.dtype:
            raise TypeError(f"model input must have dtype {self.bk.dtype.name} (the backend's), "
                            f"got {x.dtype}; convert with backend.asarray(x)")
        self.bk.require(self.xp.isfinite(x).all(), "model input contains NaN or infinite values")

    def chain(self):
        """The layers in the order ``forward`` runs them (``backward`` runs them in reverse)."""
        return list(self.children.values())

    def forward(self, x):
        if self.input_shape is not None:
            self.check_input(x)
        for layer in self.chain():
            x = layer.forward(x)
        self.forwarded = True
        return x

    def backward(self, delta, input_grad=True):
        """Propagate the residual error from the output down to the input: Eq. (2).

        Returns ``dL/dx``; with ``input_grad=False`` the first layer skips it (training)."""
        if not getattr(self, "forwarded", False):
            raise RuntimeError("backward before forward: run model.forward(x) first, it keeps what "
                               "backward needs")
        return backward_chain(self.chain(), delta, input_grad)


def noise_layers(model):
    """``{full name: GaussianNoise}`` of every noise layer in ``model``."""
    return {name: m for name, m in model.modules() if isinstance(m, GaussianNoise)}


def sigma_summary(model):
    """``{noise layer: {"mean", "std", "min", "max"}}`` of every noise level as the forward pass
    uses it (``|sigma|`` with ``abs_sigma``; host floats, read from the device at once)."""
    stats = ("mean", "std", "min", "max")
    layers = {name: layer for name, layer in noise_layers(model).items() if layer.sigma is not None}
    if not layers:
        return {}
    xp = model.bk.xp
    values = model.bk.to_host(xp.stack([xp.stack([getattr(layer.noise_level(), stat)() for stat in stats])
                                        for layer in layers.values()]))
    return {name: dict(zip(stats, map(float, row))) for name, row in zip(layers, values)}


def named_eps(model):
    """The last noise draw ``eps`` of every noise layer that drew one, by ``"<layer>.eps"``."""
    return {f"{name}.eps": m.eps for name, m in noise_layers(model).items() if m.eps is not None}


@contextmanager
def evaluating(model, noise=None):
    """Evaluation mode within the block; afterwards every layer is back in the mode it had
    (training or evaluation, and its ``eval_noise``). ``noise`` (``True``/``False``) overrides
    every noise layer's ``eval_noise`` for the block; ``None`` keeps each layer's own."""
    saved = [(m, m.training, getattr(m, "eval_noise", None)) for _, m in model.modules()]
    model.eval(noise)
    try:
        yield model
    finally:
        for m, training, eval_noise in saved:
            m.training = training
            if eval_noise is not None:
                m.eval_noise = eval_noise


@contextmanager
def input_gradient_only(model):
    """Within the block, ``model.backward`` computes ``dL/dx`` (Eq. 2 down to the input) and
    nothing else: every layer skips its parameter gradients (``grads`` keep their values), so
    attacks and saliency maps, which only need the input gradient, save those products."""
    saved = [(m, m.param_grads) for _, m in model.modules()]
    for m, _ in saved:
        m.param_grads = False
    try:
        yield model
    finally:
        for m, param_grads in saved:                       # as before, also when nested
            m.param_grads = param_grads


@contextmanager
def held_noise(model):
    """Within the block, noise layers reuse their last ``eps`` instead of drawing new ones
    (the first forward inside the block draws if a layer has no draw yet)."""
    saved = [(layer, layer.hold_eps) for layer in noise_layers(model).values()]
    for layer, _ in saved:
        layer.hold_eps = True
    try:
        yield model
    finally:
        for layer, hold_eps in saved:                      # as before, also when nested
            layer.hold_eps = hold_eps


@contextmanager
def state_restored(model):
    """Within the block the model may move its buffers (batch norm's running statistics) and
    write its gradients; afterwards each holds, in the same array, what it held before (for
    measurements that must run in training mode, such as the estimators of Theorem 2)."""
    saved = [(arrays, key, arrays[key], arrays[key].copy()) for _, m in model.modules()
             for arrays in (m.buffers, m.grads) for key in arrays]
    try:
        yield model
    finally:
        for arrays, key, array, value in saved:
            arrays[key] = array
            array[...] = value
