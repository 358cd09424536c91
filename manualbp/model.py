"""Models: the graph containers (:mod:`manualbp.layers.graph`: ``Graph``, ``Sequential``,
``Add``) and helpers over a model's noise layers and modes."""
from contextlib import contextmanager

from .layers.graph import INPUT, Add, Graph, Sequential
from .layers.noise import GaussianNoise

__all__ = ["INPUT", "Add", "Graph", "Sequential", "evaluating", "held_noise", "input_gradient_only", "named_eps",
           "noise_layers", "sigma_summary", "state_restored"]

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
    saved = [(array, array.copy()) for _, m in model.modules() for arrays in (m.buffers, m.grads)
             for array in arrays.values()]
    try:
        yield model
    finally:
        for array, value in saved:
            array[...] = value
