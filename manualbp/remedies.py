"""Remedies for learned noise that collapses: without them, the gradient of the clean training
loss can only shrink ``sigma`` when noise only hurts that loss (docs/robustness.md, "When does
learned noise help?"). Both are options of :class:`manualbp.train.Trainer` (and so of every
training script), and both get their gradients from the same hand-written backward. Each is a
:class:`Remedy`: a hook on the training step that may change the batch it trains on and add to
the gradients after the backward pass.

* :class:`AdversarialTraining` -- Madry et al. (2018), as PNI (He et al., 2019) trains learned
  noise scales: each step trains on PGD examples crafted from the engine's own input gradient
  (optionally mixed with the clean batch).
* :class:`SigmaPenalty` -- a prior on the noise levels, ``R = (strength / 2) sum (log|sigma| -
  log target)^2``, whose gradient is added to Eq. (3) explicitly (docs/derivation.md).
"""
import math

from .attacks import pgd
from .attacks.base import check_budget, check_count
from .store import is_noise_level


class Remedy:
    """What a remedy may change in a training step (Algorithm 1); here, nothing."""

    def settings(self):
        """What defines it, for a run's recorded settings."""
        return {}

    def batch(self, model, x, y, weights=None):
        """The batch ``(x, y, per-image loss weights or None)`` the step trains on, for ``(x, y)``
        (weighted by ``weights``)."""
        return x, y, weights

    def add_gradient(self, model):
        """Add to the gradients in ``model`` after the backward pass (Eq. 2, 3), before the update."""


class AdversarialTraining(Remedy):
    """Train on ``pgd(model, x, y, budget, alpha, steps, random_start)`` instead of ``x``.

    ``mix`` in ``(0, 1]``: the weight of the adversarial loss; below 1 each step trains on the
    clean batch and its PGD examples together, with the loss ``(1 - mix) CE(clean) + mix
    CE(adversarial)`` (per-image weights of :class:`~manualbp.layers.SoftmaxCrossEntropy`). The
    examples are crafted as the evaluation's PGD crafts them: the model in evaluation mode,
    learned noise drawn, batch norm on its running statistics."""

    def __init__(self, budget, alpha, steps, mix=1.0, random_start=True):
        self.budget, self.alpha = check_budget(budget, "budget"), check_budget(alpha, "alpha")
        self.steps, self.random_start = check_count(steps, "steps"), bool(random_start)
        if not 0 < mix <= 1:
            raise ValueError(f"mix must lie in (0, 1], got {mix!r}")
        self.mix = float(mix)

    def settings(self):
        return {"budget": self.budget, "alpha": self.alpha, "steps": self.steps, "mix": self.mix,
                "random_start": self.random_start}

    def batch(self, model, x, y, weights=None):
        """The training batch ``(x, y, per-image weights or None)`` for the clean ``(x, y)``."""
        adv = pgd(model, x, y, self.budget, self.alpha, self.steps, self.random_start)
        if self.mix == 1:
            return adv, y, weights
        xp, n = model.xp, len(x)
        each = xp.ones(n, dtype=x.dtype) if weights is None else weights
        weights = xp.concatenate([each * (2 * (1 - self.mix)), each * (2 * self.mix)])
        return xp.concatenate([x, adv]), xp.concatenate([y, y]), weights


class SigmaPenalty(Remedy):
    """The prior ``R(sigma) = (strength / 2) sum_i (log|sigma_i| - log target)^2`` on every
    learned noise level: it pulls ``log sigma`` towards ``log target`` against the shrinking
    pull of the clean loss. Its gradient ``dR/dsigma = strength (log|sigma| - log target) /
    sigma`` is added to each ``sigma``'s Eq. (3) gradient after the backward pass."""

    def __init__(self, strength, target=1.0):
        if not (math.isfinite(strength) and strength > 0):
            raise ValueError(f"strength must be a positive finite number, got {strength!r}")
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"target must be a positive finite number, got {target!r}")
        self.strength, self.log_target = float(strength), math.log(target)

    def settings(self):
        return {"strength": self.strength, "target": math.exp(self.log_target)}

    def levels(self, model):
        """``[(sigma, its module, its key)]`` of every learned noise level."""
        return [(module.params[key], module, key) for name, module, key in model.parameter_slots()
                if is_noise_level(name)]

    def value(self, model):
        """``R(sigma)`` (a 0-d device array)."""
        xp = model.xp
        return sum(0.5 * self.strength * ((xp.log(xp.abs(s)) - self.log_target) ** 2).sum()
                   for s, _, _ in self.levels(model))

    def add_gradient(self, model):
        """``grads[sigma] += dR/dsigma`` for every learned noise level (in place)."""
        xp = model.xp
        for sigma, module, key in self.levels(model):
            module.grads[key] += self.strength * (xp.log(xp.abs(sigma)) - self.log_target) / sigma


#: Each remedy by its key in a training set-up (:func:`manualbp.train.train_model`) and in a run's
#: recorded settings.
REMEDIES = {"adversarial": AdversarialTraining, "sigma_penalty": SigmaPenalty}
