"""Training-time augmentation on the device: random crops of a zero-padded image and horizontal
flips, and Gaussian noise on the pixels, for a whole batch at once (no loop over samples).

Each function takes the batch ``(N, C, H, W)`` and the backend, so it can be passed as the
``augment`` argument of :class:`manualbp.train.Trainer`; its randomness comes from the backend's
seeded generator.
"""

__all__ = ["crop_flip", "input_noise", "random_crop_flip"]


def crop_flip(x, top, left, flip, padding, xp):
    """Crop ``x`` ``(N, C, H, W)`` from its copy zero-padded by ``padding`` on every side, sample
    ``n``'s crop starting at row ``top[n]`` and column ``left[n]`` (``0 .. 2 * padding``), then
    mirror left-right the samples where ``flip[n]`` is true. Returns ``(N, C, H, W)``.

    ``top = left = padding`` and ``flip`` false returns ``x`` unchanged.
    """
    n, c, h, w = x.shape
    padded = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    rows = top[:, None] + xp.arange(h)                         # (N, H) rows of the padded image
    cols = left[:, None] + xp.arange(w)                        # (N, W)
    cols = xp.where(flip[:, None], cols[:, ::-1], cols)        # a flip reads the columns backwards
    return padded[xp.arange(n)[:, None, None, None], xp.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def random_crop_flip(x, bk, padding=4, flip=True):
    """Random ``H x W`` crop of ``x`` zero-padded by ``padding`` pixels (offsets uniform on
    ``0 .. 2 * padding`` per sample), then a horizontal flip with probability 1/2 (if ``flip``):
    the CIFAR-10 / Tiny-ImageNet training augmentation."""
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip expects images (N, C, H, W), got shape {tuple(x.shape)}")
    xp, n = bk.xp, x.shape[0]
    span = 2 * padding + 1

    def offsets():
        u = bk.uniform(0, 1, (n,))
        return xp.minimum((u * span).astype(xp.int64), span - 1)

    top, left = offsets(), offsets()
    mirror = bk.uniform(0, 1, (n,)) < 0.5 if flip else xp.zeros(n, dtype=bool)
    return crop_flip(x, top, left, mirror, padding, xp)


def input_noise(scale, then=None):
    """The augmentation ``augment(x, bk) -> x + scale * eps``, ``eps ~ N(0, 1)`` per pixel drawn by
    the backend (``bk.normal``), after the augmentation ``then`` when given: Gaussian data
    augmentation at the scale of input smoothing, as Cohen et al. (ICML 2019) train. The
    pixels are not clipped to [0, 1] (the smoothed classifier sees them unclipped too)."""
    scale = float(scale)
    if not scale >= 0:
        raise ValueError(f"input noise scale must be a non-negative number, got {scale!r}")

    def augment(x, bk):
        if then is not None:
            x = then(x, bk)
        return x + scale * bk.normal(x.shape)

    augment.scale, augment.then = scale, then
    return augment
