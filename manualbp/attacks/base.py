"""What every attack shares: input checks, the input gradient from the engine's own backward
pass, the budget box, and holding one noise draw fixed.

The gradient always comes from ``model.backward`` -- Eq. (2) run down to the input -- seeded by
the softmax cross-entropy's ``e = (softmax - onehot) / N``. The engine's loss is the batch
*mean*, so ``model.backward`` returns ``dL/dx_i = (dCE_i/dx_i) / N``: the sign is the
per-sample one, and :func:`input_gradient` rescales where the size matters.

Every attack runs the model in evaluation mode (:func:`in_evaluation_mode`): it never updates
batch-norm running statistics nor draws training noise, and gives the model back as it found it.
"""
import functools
from contextlib import contextmanager

from ..layers import SoftmaxCrossEntropy
from ..model import evaluating, held_noise, input_gradient_only, noise_layers


def in_evaluation_mode(attack):
    """Decorator: ``attack(model, ...)`` runs with ``model`` in evaluation mode -- each noise
    layer's own ``eval_noise``, or the caller's choice from ``evaluating(model, noise)`` -- and
    leaves every layer's mode as it was."""
    @functools.wraps(attack)
    def run(model, *args, **kwargs):
        with evaluating(model):
            return attack(model, *args, **kwargs)
    return run


def check_images(x, bk):
    """Raise a clear error unless ``x`` is a floating array of pixels in ``[0, 1]`` (the range
    is a :meth:`~manualbp.backend.Backend.require` check: deferred on the GPU)."""
    xp = bk.xp
    if not isinstance(x, xp.ndarray):
        raise TypeError(f"images must be a {xp.__name__} array (the model's backend), got "
                        f"{type(x).__name__}; convert with backend.asarray(x)")
    if x.dtype.kind != "f":
        raise TypeError(f"images must be floating point pixels in [0, 1], got dtype {x.dtype}")
    if x.size:
        bk.require(xp.logical_and(x.min() >= 0, x.max() <= 1), "images must lie in pixel space [0, 1]",
                   lambda: f", got values in [{float(x.min()):.4g}, {float(x.max()):.4g}]")


def check_labels(y, n, xp):
    if not isinstance(y, xp.ndarray) or y.shape != (n,) or y.dtype.kind not in "iu":
        raise ValueError(f"labels must be an integer {xp.__name__} array of shape ({n},), got "
                         f"{type(y).__name__} {getattr(y, 'dtype', '')} {getattr(y, 'shape', '')}")


def check_budget(value, name="budget"):
    """A finite number >= 0 (a perturbation budget or step size), as a float."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0 (pixel units), got {value}")
    return value


def check_count(value, name):
    """A positive integer (steps, draws, iterations)."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_inputs(model, x, y):
    """Common checks of an attack's ``(x, y)``; returns the array module."""
    xp = model.bk.xp
    check_images(x, model.bk)
    check_labels(y, len(x), xp)
    return xp


@in_evaluation_mode
def input_gradient(model, x, y, weights=None):
    """One forward pass and one ``model.backward``: ``(per-sample losses, gradient)``.

    ``weights=None``: the gradient of the engine's mean loss, ``(1/N) sum_i CE_i`` (the
    per-sample gradients divided by ``N``: enough for sign-based attacks). ``weights`` (shape
    ``(N,)``): the gradient of ``sum_i w_i CE_i`` -- the seed ``e`` is rescaled by ``N w_i``
    before the backward pass, which is linear in its seed. Per-sample losses ``CE_i``, shape
    ``(N,)``, are the loss layer's (a stable log-sum-exp of the logits).
    """
    loss = SoftmaxCrossEntropy(model.bk)
    loss.forward(model.forward(x), y, None if weights is None else len(x) * weights)
    seed = loss.backward()
    with input_gradient_only(model):                    # no parameter gradients needed
        grad = model.backward(seed)
    return loss.losses, grad


def budget_box(x, budget, xp):
    """Bounds ``(max(x - budget, 0), min(x + budget, 1))``: the L-inf ball intersected with [0, 1]."""
    return xp.maximum(x - budget, 0), xp.minimum(x + budget, 1)


def draws_noise(model):
    """Whether a forward pass of ``model`` in its current mode draws noise (a randomised model)."""
    return any(layer.draws for layer in noise_layers(model).values())


@contextmanager
def frozen_noise(model, x):
    """Within the block every forward pass reuses one fresh noise draw (made on ``x`` here), so
    an objective that a line search evaluates again and again is deterministic."""
    if not draws_noise(model):
        yield model
        return
    model.forward(x)
    with held_noise(model):
        yield model
