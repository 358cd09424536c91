"""Expectation over transformation: PGD against a randomised model (Athalye et al. 2018)."""
from .base import check_count, draws_noise, in_evaluation_mode, input_gradient
from .pgd import pgd

#: Noise draws per expected gradient: K = 20, as AutoAttack's EOT for randomised defences.
DRAWS = 20


@in_evaluation_mode
def expected_gradient(model, x, y, draws=DRAWS, max_batch=2048):
    """``dL/dx`` averaged over ``draws`` independent noise draws of a randomised model.

    The batch is tiled ``k`` times (``k * N <= max_batch`` where possible) so each forward and
    ``model.backward`` handles ``k`` draws at once; the per-copy gradients are summed back onto
    the ``N`` images. The result is the gradient of the mean loss averaged over the draws, the
    same scale as one plain gradient. A model that draws no noise in evaluation mode has one
    gradient, computed once.
    """
    draws = check_count(draws, "draws")
    if not draws_noise(model):
        return input_gradient(model, x, y)[1]
    xp, n = model.bk.xp, len(x)
    per_pass = max(1, min(draws, max_batch // max(n, 1)))
    total, done = None, 0
    while done < draws:
        k = min(per_pass, draws - done)
        tiled = xp.broadcast_to(x, (k,) + x.shape).reshape((k * n,) + x.shape[1:])
        _, grad = input_gradient(model, tiled, xp.tile(y, k))
        part = grad.reshape((k,) + x.shape).sum(axis=0) * k     # each copy weighed 1/n, as one plain pass
        total = part if total is None else total + part
        done += k
    return total / draws


@in_evaluation_mode
def eot_pgd(model, x, y, budget, alpha, steps, draws=DRAWS, random_start=False, max_batch=2048):
    """PGD whose every step uses :func:`expected_gradient` over ``draws`` noise draws."""
    draws = check_count(draws, "draws")
    return pgd(model, x, y, budget, alpha, steps, random_start,
               gradient=lambda m, a, b: expected_gradient(m, a, b, draws, max_batch))
