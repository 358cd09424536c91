"""Projected gradient descent on the loss, L-inf ball (Madry et al. 2017)."""
from .base import budget_box, check_budget, check_count, check_inputs, in_evaluation_mode, input_gradient


@in_evaluation_mode
def pgd(model, x, y, budget, alpha, steps, random_start=False, gradient=None):
    """``steps`` iterations of ``x <- proj(x + alpha * sign(g))``; ``proj`` clips to the L-inf
    ball of radius ``budget`` around the clean ``x`` and to ``[0, 1]`` (one clip to the
    intersection, which is the projection onto it since both sets are boxes).

    ``random_start``: start from ``x + U(-budget, budget)`` (the backend's generator), projected.
    ``gradient(model, x, y)`` -> ``dL/dx`` (default: one ``model.backward`` of the mean loss);
    EOT-PGD passes the noise-averaged gradient. One step, no random start and
    ``alpha = budget`` is FGSM exactly.
    """
    xp = check_inputs(model, x, y)
    budget, alpha = check_budget(budget, "budget"), check_budget(alpha, "alpha")
    steps = check_count(steps, "steps")
    gradient = gradient or (lambda m, a, b: input_gradient(m, a, b)[1])
    low, high = budget_box(x, budget, xp)
    adv = x.copy()
    if random_start:
        adv += model.bk.uniform(-budget, budget, x.shape)
        _project(adv, low, high, xp)
    for _ in range(steps):
        step = xp.sign(gradient(model, adv, y))
        step *= alpha
        adv += step
        _project(adv, low, high, xp)
    return adv


def _project(adv, low, high, xp):
    """Clip ``adv`` to ``[low, high]`` in place (``low <= high`` everywhere)."""
    xp.minimum(adv, high, out=adv)
    xp.maximum(adv, low, out=adv)
