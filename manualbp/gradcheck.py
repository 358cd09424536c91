"""Finite-difference gradient checks for any layer, block or model (use a float64 backend).

Noise layers hold their draw ``eps`` fixed during a check (:func:`manualbp.model.held_noise`), so
the checked function is deterministic: the gradient with respect to ``sigma`` is then exactly the
pathwise derivative of Eq. (3).

Relative error: ``max|a - n| / max(1e-8, max(|a| + |n|))`` over all entries, with ``a`` the
hand-written gradient and ``n`` the centred difference ``(f(p + h) - f(p - h)) / 2h``. Scaling
by the largest entry (not entry by entry) keeps entries that are zero up to round-off from
dominating the error.
"""
from .model import held_noise


def relative_error(a, b, floor=1e-8):
    """``max|a - b| / max(floor, max(|a| + |b|))`` over the entries of two arrays of one shape
    (0 when empty). ``floor`` keeps a pair of zero arrays from dividing by zero."""
    if a.size == 0:
        return 0.0
    return float(abs(a - b).max()) / max(floor, float((abs(a) + abs(b)).max()))


def numerical_gradient(f, array, h=1e-5):
    """Centred differences of the scalar function ``f()`` with respect to every entry of ``array``,
    which is perturbed in place (and restored)."""
    if not array.flags.c_contiguous:
        raise ValueError("numerical_gradient perturbs the array in place: it must be C-contiguous")
    grad = array.copy()
    flat, flat_grad = array.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        flat_grad[i] = (f_plus - f_minus) / (2 * h)
    return grad


def _objective(module, x, loss, labels, projection):
    """The scalar checked: the loss of the model's output, or ``sum(output * projection)``."""
    out = module.forward(x)
    if loss is not None:
        return float(loss.forward(out, labels))
    return float((out * projection).sum())


def _seed(module, x, loss, labels, projection):
    out = module.forward(x)
    if loss is not None:
        loss.forward(out, labels)
        return loss.backward()
    return projection


def _hand_written(module, x, loss, labels, seed):
    """One forward and hand-written backward pass (noise held by the caller); returns the random
    projection (``None`` with a loss) and copies of every gradient, the input's as ``"input"``."""
    projection = None
    if loss is None:
        module.bk.seed(seed)
        projection = module.bk.normal(module.forward(x).shape)
    grad_x = module.backward(_seed(module, x, loss, labels, projection))
    grads = {name: g.copy() for name, g in module.named_gradients().items()}
    grads["input"] = grad_x
    return projection, grads


def check_gradients(module, x, loss=None, labels=None, h=1e-5, seed=0):
    """Compare every hand-written gradient of ``module`` (parameters and the input) with centred
    finite differences. Without ``loss`` the checked scalar is ``sum(output * r)`` for a fixed
    random ``r``. Returns ``{name: relative error}``, the input under ``"input"``."""
    with held_noise(module):
        projection, analytic = _hand_written(module, x, loss, labels, seed)
        targets = dict(module.named_parameters(), input=x)
        errors = {}
        for name, array in targets.items():
            numeric = numerical_gradient(lambda: _objective(module, x, loss, labels, projection), array, h)
            errors[name] = relative_error(analytic[name], numeric)
    return errors


def directional_check(module, x, loss=None, labels=None, h=1e-5, seed=0):
    """Check a whole model along one random direction ``d`` over all parameters and the input:
    ``(f(p + h d) - f(p - h d)) / 2h`` against ``<grad f, d>`` (as Chainer's ``check_backward``).
    Returns the relative error of the two numbers."""
    bk = module.bk
    with held_noise(module):
        projection, grads = _hand_written(module, x, loss, labels, seed)
        arrays = dict(module.named_parameters(), input=x)
        bk.seed(seed + 1)
        directions = {name: bk.normal(a.shape) for name, a in arrays.items()}
        analytic = sum(float((grads[n] * directions[n]).sum()) for n in arrays)

        originals = {n: a.copy() for n, a in arrays.items()}

        def shifted(step):
            for n, a in arrays.items():
                a += step * directions[n]
            value = _objective(module, x, loss, labels, projection)
            for n, a in arrays.items():
                a[...] = originals[n]
            return value

        numeric = (shifted(h) - shifted(-h)) / (2 * h)
    return relative_error(bk.xp.asarray(analytic), bk.xp.asarray(numeric))
