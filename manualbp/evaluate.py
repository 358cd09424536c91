"""The evaluation protocol: accuracy of a model in a stated noise mode, over noise draws, and
attacks run batch by batch in that mode.

Evaluation modes: ``noise=None`` evaluates each model as the paper does (each noise layer's own
``eval_noise``: learned noise on, fixed noise off); ``True`` / ``False`` switch every noise layer
on / off. A model that draws noise is measured over ``draws`` independent draws: ``mean``
accuracy, ``min`` over the draws, and ``all`` -- the fraction of images classified correctly in
every draw (worst-of-K). Attacks on such a model take their gradient through a noisy forward
pass, as the paper's do. Every function leaves the model's mode as it found it.

Images are ``(N, C, H, W)`` pixels in ``[0, 1]``, as the loaders give them and every model of
the zoo takes them. Models and attacks run on the backend (NumPy or CuPy); hits and norms are
computed on the host with NumPy, after ``bk.to_host``.
"""
import numpy as np

from .attacks.base import check_count, draws_noise
from .model import evaluating, noise_layers


#: Noise draws per accuracy of a randomised model (and the K of its worst-of-K accuracy).
DRAWS = 5
#: Images per attack call.
ATTACK_BATCH = 500


def check_some(x):
    """Refuse an empty batch of images, which has no accuracy and nothing to attack."""
    if len(x) == 0:
        raise ValueError("no images: x is empty (expected at least one image)")


def predict(model, x, batch_size=1000):
    """Predicted classes of ``x`` in the model's current mode."""
    check_some(x)
    xp = model.bk.xp
    return xp.concatenate([model.forward(x[i:i + batch_size]).argmax(axis=1)
                           for i in range(0, len(x), batch_size)])


def accuracy_over_draws(model, x, y, draws=DRAWS, noise=None, batch_size=1000):
    """``{"mean", "min", "all", "draws"}``: accuracy over ``draws`` noise draws (one pass when
    the model draws no noise in this mode); ``all`` is the worst-of-K accuracy per image."""
    bk, draws = model.bk, check_count(draws, "draws")
    with evaluating(model, noise):
        k = draws if draws_noise(model) else 1
        hits = np.stack([bk.to_host(predict(model, x, batch_size) == y) for _ in range(k)])
    per_draw = hits.mean(axis=1)
    return {"mean": float(per_draw.mean()), "min": float(per_draw.min()),
            "all": float(hits.all(axis=0).mean()), "draws": k}


def accuracy(model, x, y, noise=None, batch_size=1000):
    """Accuracy of one pass (one noise draw if the model draws noise)."""
    return accuracy_over_draws(model, x, y, 1, noise, batch_size)["mean"]


def run_attack(model, attack, x, y, noise=None, batch_size=ATTACK_BATCH, **params):
    """``attack(model, xb, yb, **params)`` on batches of ``batch_size``, with the model in the
    evaluation mode ``noise``; returns the adversarial ``x``."""
    check_some(x)
    xp = model.bk.xp
    with evaluating(model, noise):
        return xp.concatenate([attack(model, x[i:i + batch_size], y[i:i + batch_size], **params)
                               for i in range(0, len(x), batch_size)])


def perturbation_norms(x, adv, bk):
    """Mean L2 and L-inf norm of ``adv - x`` per image (host floats)."""
    d = bk.to_host(adv - x).reshape(len(x), -1).astype(np.float64)
    return {"l2": float(np.sqrt((d ** 2).sum(axis=1)).mean()), "linf": float(np.abs(d).max(axis=1).mean())}


def noise_defaults(model):
    """Which switch the paper's evaluation mode equals: ``"both"`` (no noise layers), ``True``
    (all noise on), ``False`` (all off) or ``None`` (mixed)."""
    flags = {bool(layer.eval_noise) for layer in noise_layers(model).values()}
    if not flags:
        return "both"
    return flags.pop() if len(flags) == 1 else None
