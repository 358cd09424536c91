"""Saliency maps from the engine's input gradient: plain gradients and SmoothGrad (Eq. 8).

The gradient of the class score ``y_c`` (the ``c``-th logit) with respect to the input is one
backward pass seeded with the one-hot vector of ``c``: ``model.backward(onehot_c)`` returns
``d y_c / d x`` (Eq. 2 run down to the input).
"""
from .model import evaluating, input_gradient_only


def score_gradient(model, x, classes):
    """``d y_c / d x`` for every row of ``x`` and its class ``classes[n]``; shape of ``x``. The
    model runs in evaluation mode (each noise layer's own evaluation setting) and is left in the
    mode it had."""
    if classes.shape != (len(x),):
        raise ValueError(f"classes must have shape ({len(x)},), one per image, got {tuple(classes.shape)}")
    with evaluating(model), input_gradient_only(model):
        logits = model.forward(x)
        seed = model.xp.zeros_like(logits)
        seed[model.xp.arange(len(x)), classes] = 1               # onehot_c: d y_c / d logits
        return model.backward(seed)


def smoothgrad(model, x, classes=None, samples=25, noise=0.15, batch_size=1000, model_noise=None,
               seed=None):
    """SmoothGrad saliency (Smilkov et al. 2017), the paper's Eq. (8):
    ``M_c(x) = 1/n sum_k (d y_c / d x (x + N(0, s^2)))^2`` with ``s = noise * (max x - min x)``
    per image, ``n = samples``; for images ``(N, C, H, W)`` the channels are summed.

    Parameters
    ----------
    x : inputs ``(N, ...)`` in the model's input space.
    classes : class ``c`` per image, integers ``(N,)``; default the model's prediction.
    samples, noise : ``n`` and the noise level relative to each image's range (paper: 25, 0.15).
    batch_size : rows per forward/backward pass (the ``N * samples`` noisy copies are chunked).
    model_noise : noise of the model's own noise layers while computing gradients: ``None`` keeps
        each layer's evaluation setting, ``True``/``False`` forces it (see ``evaluating``).
    seed : re-seed the backend's generator first, for reproducible maps.

    Returns ``(maps, classes)``: maps ``(N, H, W)`` for images, else the shape of ``x``.
    """
    bk, xp = model.bk, model.xp
    if samples < 1 or len(x) == 0:
        raise ValueError(f"smoothgrad needs at least one image and one sample, got {len(x)} images "
                         f"and samples={samples}")
    if seed is not None:
        bk.seed(seed)
    with evaluating(model, model_noise):
        if classes is None:
            classes = model.forward(x).argmax(axis=1)
        flat = x.reshape(len(x), -1)
        scale = (flat.max(axis=1) - flat.min(axis=1)) * noise    # s per image
        scale = scale.reshape((len(x),) + (1,) * (x.ndim - 1))
        noisy = xp.concatenate([x + scale * bk.normal(x.shape) for _ in range(samples)])
        targets = xp.tile(classes, samples)
        squares = xp.empty_like(noisy)
        for start in range(0, len(noisy), batch_size):
            end = start + batch_size
            grad = score_gradient(model, noisy[start:end], targets[start:end])
            xp.multiply(grad, grad, out=squares[start:end])      # (d y_c / d x)^2
    maps = squares.reshape((samples,) + x.shape).mean(axis=0)    # 1/n sum over the noisy copies
    if x.ndim == 4:
        maps = maps.sum(axis=1)                                  # channels summed for display
    return maps, classes
