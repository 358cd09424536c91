"""Natural corruptions in the style of Hendrycks & Dietterich (2019) at five severities:
Gaussian noise, impulse (salt-and-pepper) noise, glass blur and contrast.

These are data transforms, not part of the engine: they run on the host in NumPy (and
``scipy.ndimage.gaussian_filter``), on whole batches ``(N, C, H, W)`` of pixels in ``[0, 1]``,
float32 in and out. Randomness comes from a generator seeded by ``(seed, corruption, severity)``,
so the same seed gives the same images.

Severity constants (docs/robustness.md): two tables, CIFAR-10-C's and Tiny-ImageNet-C's; each
dataset names its own (:attr:`manualbp.datasets.Dataset.corruptions`: CIFAR-10-C's for CIFAR-10
and, as stated there, for MNIST-size images; Tiny-ImageNet-C's for Tiny-ImageNet).
"""
import numpy as np
from scipy.ndimage import gaussian_filter

CORRUPTIONS = ("gaussian_noise", "impulse_noise", "glass_blur", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)

#: constants by table, then corruption, one entry per severity 1..5
CONSTANTS = {
    "cifar10-c": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    },
    "tiny-imagenet-c": {
        "gaussian_noise": (0.04, 0.08, 0.12, 0.15, 0.18),
        "impulse_noise": (0.01, 0.02, 0.05, 0.08, 0.14),
        "glass_blur": ((0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
    },
}


def _blur(x, sigma):
    """Gaussian blur over H and W of ``(N, C, H, W)`` (edges: nearest, as skimage's default)."""
    return gaussian_filter(x, sigma=(0, 0, sigma, sigma), mode="nearest")


def gaussian_noise(x, c, rng):
    """``clip(x + N(0, c^2), 0, 1)``, independent per element."""
    return np.clip(x + rng.normal(0.0, c, x.shape), 0, 1)


def impulse_noise(x, c, rng):
    """Salt-and-pepper: each element is hit with probability ``c``; a hit becomes 0 or 1."""
    hit = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    return np.where(hit, salt.astype(x.dtype), x)


def glass_blur(x, c, rng):
    """Blur (``sigma``), quantise to 8 bits, ``iterations`` passes of local shuffling -- for
    ``h`` from ``H - d`` down to ``d + 1`` and ``w`` likewise, swap pixel ``(h, w)`` with
    ``(h + dy, w + dx)``, ``dx, dy`` uniform on ``{-d, ..., d - 1}`` drawn per image -- then
    blur again. The loop runs over pixel positions, each step on all images at once."""
    sigma, d, iterations = c
    n, _, height, width = x.shape
    out = np.floor(_blur(x, sigma) * 255) / 255           # np.uint8(blur * 255), in [0, 1]
    images = np.arange(n)
    for _ in range(iterations):
        for h in range(height - d, d, -1):
            for w in range(width - d, d, -1):
                dy, dx = rng.integers(-d, d, size=(2, n))
                hp, wp = h + dy, w + dx
                here, there = out[images, :, h, w], out[images, :, hp, wp]
                out[images, :, h, w], out[images, :, hp, wp] = there, here
    return np.clip(_blur(out, sigma), 0, 1)


def contrast(x, c, rng=None):
    """``clip((x - m) * c + m, 0, 1)`` with ``m`` the mean of each image and channel."""
    mean = x.mean(axis=(2, 3), keepdims=True)
    return np.clip((x - mean) * c + mean, 0, 1)


FUNCTIONS = {"gaussian_noise": gaussian_noise, "impulse_noise": impulse_noise,
             "glass_blur": glass_blur, "contrast": contrast}


def constants_for(name, table):
    """The five severity constants of corruption ``name`` in ``table`` (a key of :data:`CONSTANTS`)."""
    if name not in FUNCTIONS:
        raise ValueError(f"unknown corruption {name!r}: expected one of {', '.join(CORRUPTIONS)}")
    if table not in CONSTANTS:
        raise ValueError(f"unknown corruption table {table!r}: expected one of {', '.join(CONSTANTS)}")
    return CONSTANTS[table][name]


def corrupt(x, name, severity, table, seed=0):
    """Corrupt a batch of images ``x`` ``(N, C, H, W)`` (host, pixels in ``[0, 1]``) with
    corruption ``name`` at ``severity`` 1..5, with the constants of ``table`` (the dataset's);
    returns float32 ``(N, C, H, W)`` in ``[0, 1]``."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"corrupt expects images (N, C, H, W), got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"corrupt expects floating point pixels in [0, 1], got dtype {x.dtype}")
    if x.size and not (x.min() >= 0 and x.max() <= 1):
        raise ValueError(f"images must lie in pixel space [0, 1], got values in "
                         f"[{x.min():.4g}, {x.max():.4g}]")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")
    constant = constants_for(name, table)[severity - 1]
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity])
    out = FUNCTIONS[name](x.astype(np.float64), constant, rng)
    return out.astype(np.float32)
