"""L-BFGS attacks with ``scipy.optimize`` (L-BFGS-B, box bounds), in two forms.

* :func:`lbfgs` -- the paper's form (its released code): maximise the cross-entropy of the true
  class over ``[0, 1]`` (intersected with a ``budget`` box when one is given), with an iteration
  cap (Table 2) and no distance term; the perturbation size is whatever the cap lets through.
* :func:`lbfgs_targeted` -- Szegedy et al. (2014): minimise ``c |r|^2 + CE(x + r, target)``
  over the box, searching ``c``. It is written here with the constant on the loss,
  ``|r|^2 + c * CE`` (the same minimisers, ``c`` replaced by ``1 / c``), as Foolbox does: ``c``
  grows until the result is adversarial, then bisection finds the smallest ``c`` that is.

Both optimise the whole batch as one objective, the sum of the per-sample objectives (they are
separable, so the minimiser is each sample's own; with an iteration cap the shared line search
makes results depend a little on the batch). Values and gradients come from the engine's forward
and ``model.backward`` (:func:`input_gradient`); scipy works in float64 on the host. A
randomised model is attacked through one noise draw held fixed for the whole optimisation, so
the objective the line search sees is deterministic.
"""
import math
import numbers

import numpy
from scipy.optimize import Bounds, minimize

from .base import (budget_box, check_budget, check_count, check_inputs, frozen_noise,
                   in_evaluation_mode, input_gradient)


def _bounds(x, budget, xp, bk):
    low, high = (xp.zeros_like(x), xp.ones_like(x)) if budget is None else budget_box(x, budget, xp)
    return bk.to_host(low).astype(numpy.float64).ravel(), bk.to_host(high).astype(numpy.float64).ravel()


def _minimize(objective, start, low, high, max_iter):
    result = minimize(objective, start, jac=True, method="L-BFGS-B", bounds=Bounds(low, high),
                      options={"maxiter": max_iter, "maxfun": 20 * max_iter})
    return numpy.clip(result.x, low, high)


@in_evaluation_mode
def lbfgs(model, x, y, max_iter=10, budget=None):
    """The paper's L-BFGS: maximise ``sum_i CE(f(x_i'), y_i)`` over ``x'`` in ``[0, 1]`` (and
    ``|x' - x|_inf <= budget`` when ``budget`` is given), starting at ``x``, at most ``max_iter``
    L-BFGS-B iterations. Returns ``x'`` in the model's dtype."""
    xp = check_inputs(model, x, y)
    max_iter = check_count(max_iter, "max_iter")
    budget = None if budget is None else check_budget(budget, "budget")
    bk, shape = model.bk, x.shape
    ones = xp.ones(len(x), dtype=x.dtype)

    def objective(z):
        losses, grad = input_gradient(model, bk.asarray(z.reshape(shape)), y, weights=ones)
        return -float(losses.sum()), -bk.to_host(grad).astype(numpy.float64).ravel()

    low, high = _bounds(x, budget, xp, bk)
    with frozen_noise(model, x):
        best = _minimize(objective, bk.to_host(x).astype(numpy.float64).ravel(), low, high, max_iter)
    return bk.asarray(best.reshape(shape))


@in_evaluation_mode
def lbfgs_targeted(model, x, target, c0=0.01, search_steps=10, grow=10.0, max_iter=100, budget=None):
    """Szegedy et al.'s box-constrained L-BFGS with a per-sample search over ``c``.

    Each of ``search_steps`` rounds minimises ``sum_i |r_i|^2 + c_i CE(x_i + r_i, target_i)``
    with ``x + r`` in ``[0, 1]`` (and the ``budget`` box when given), starting at ``r = 0``. A
    sample whose result is classified as its target records it (keeping the smallest ``|r|``)
    and bisects ``c`` down towards the largest failing ``c``; otherwise ``c`` is multiplied by
    ``grow`` until a success, then bisected up. The model's prediction is judged through the
    same held noise draw as the optimisation.

    Returns ``(adv, info)``: ``adv`` holds the smallest successful example per sample and the
    clean image where none succeeded; ``info`` (host arrays) has ``success``, ``c`` (the
    constant that produced the kept example), ``c_min`` (the smallest successful constant
    tried), ``l2`` (``|r|`` of the kept example, ``inf`` when none), and ``history``, one
    ``(c, success, |r|)`` triple per round.
    """
    xp = check_inputs(model, x, target)
    search_steps, max_iter = check_count(search_steps, "search_steps"), check_count(max_iter, "max_iter")
    if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in (c0, grow)) or c0 <= 0 or grow <= 1:
        raise ValueError(f"need finite numbers c0 > 0 and grow > 1, got c0={c0!r}, grow={grow!r}")
    budget = None if budget is None else check_budget(budget, "budget")
    bk, shape, n = model.bk, x.shape, len(x)
    x_host = bk.to_host(x).astype(numpy.float64).ravel()
    low, high = _bounds(x, budget, xp, bk)
    c = numpy.full(n, c0)
    lower, upper = numpy.zeros(n), numpy.full(n, numpy.inf)
    best = x_host.reshape(n, -1).copy()
    info = {"success": numpy.zeros(n, bool), "c": numpy.full(n, numpy.nan),
            "c_min": numpy.full(n, numpy.nan), "l2": numpy.full(n, numpy.inf), "history": []}

    def objective(z):
        r = z - x_host
        losses, grad = input_gradient(model, bk.asarray(z.reshape(shape)), target,
                                      weights=bk.asarray(c))
        value = float(r @ r) + float((bk.to_host(losses) * c).sum())
        return value, 2 * r + bk.to_host(grad).astype(numpy.float64).ravel()

    with frozen_noise(model, x):
        for _ in range(search_steps):
            z = _minimize(objective, x_host, low, high, max_iter)
            adv = bk.asarray(z.reshape(shape))
            hit = bk.to_host(model.forward(adv).argmax(axis=1) == target)
            l2 = numpy.sqrt(((z - x_host).reshape(n, -1) ** 2).sum(axis=1))
            info["history"].append((c.copy(), hit.copy(), l2))
            keep = hit & (l2 < info["l2"])
            best[keep] = z.reshape(n, -1)[keep]
            info["l2"][keep], info["c"][keep] = l2[keep], c[keep]
            info["c_min"] = numpy.fmin(info["c_min"], numpy.where(hit, c, numpy.nan))
            info["success"] |= hit
            upper = numpy.where(hit, numpy.minimum(upper, c), upper)
            lower = numpy.where(hit, lower, numpy.maximum(lower, c))
            c = numpy.where(numpy.isinf(upper), c * grow, (lower + upper) / 2)
    return bk.asarray(best.reshape(shape)), info
