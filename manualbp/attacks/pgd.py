"""Projected gradient descent on the loss, L-inf ball (Madry et al. 2017)."""
from .base import check_budget, check_count, check_inputs, eps_box, in_evaluation_mode, input_gradient


@in_evaluation_mode
def pgd(model, x, y, eps, alpha, steps, random_start=False, gradient=None):
    """``steps`` iterations of ``x <- proj(x + alpha * sign(g))``; ``proj`` clips to the L-inf
    ball of radius ``eps`` around the clean ``x`` and to ``[0, 1]`` (one clip to the
    intersection, which is the projection onto it since both sets are boxes).

    ``random_start``: start from ``x + U(-eps, eps)`` (the backend's generator), projected.
    ``gradient(model, x, y)`` -> ``dL/dx`` (default: one ``model.backward`` of the mean loss);
    EOT-PGD passes the noise-averaged gradient. One step, no random start and
    ``alpha = eps`` is FGSM exactly.
    """
    xp = check_inputs(model, x, y)
    eps, alpha = check_budget(eps, "eps"), check_budget(alpha, "alpha")
    steps = check_count(steps, "steps")
    gradient = gradient or (lambda m, a, b: input_gradient(m, a, b)[1])
    low, high = eps_box(x, eps, xp)
    adv = x.copy()
    if random_start:
        adv += model.bk.uniform(-eps, eps, x.shape)
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
