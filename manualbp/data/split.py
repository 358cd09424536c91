"""Seeded train/val/test splits.

Rounding: part ``i`` of ``n`` items gets ``floor(n * r_i / sum(r))`` items,
and the items left over go one each to the parts with the largest
fractional remainders (ties to the earlier part), so sizes always add up
to ``n`` and exact proportions (70000 at 5:1:1 -> 50000/10000/10000) are
kept exactly.  Float ratios are read as the nearest fraction with
denominator <= 10**6 (0.7 means 7/10).
"""

from fractions import Fraction
from numbers import Integral, Real

import numpy as np

__all__ = ["split_sizes", "split_indices", "split_dataset"]

SPLIT_NAMES = ("train", "val", "test")


def _check_count(n, what="n"):
    if isinstance(n, bool) or not isinstance(n, Integral) or n < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {n!r}")
    return int(n)


def _fractions(ratios):
    try:
        ratios = tuple(ratios)
    except TypeError:
        raise ValueError(f"ratios must be a sequence of positive numbers, got {ratios!r}") from None
    if not ratios:
        raise ValueError("ratios must hold at least one positive number, got ()")
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, Real) or not np.isfinite(r) or r <= 0:
            raise ValueError(f"ratios must be positive finite numbers, got {ratios!r}")
    return [Fraction(int(r)) if isinstance(r, Integral)
            else Fraction(float(r)).limit_denominator(10**6) for r in ratios]


def split_sizes(n, ratios=(5, 1, 1)):
    """Sizes of the parts of ``n`` items cut in proportion to ``ratios``."""
    n = _check_count(n)
    fr = _fractions(ratios)
    total = sum(fr)
    quotas = [n * r / total for r in fr]
    sizes = [q.numerator // q.denominator for q in quotas]
    left = n - sum(sizes)
    order = sorted(range(len(fr)), key=lambda i: (-(quotas[i] - sizes[i]), i))
    for i in order[:left]:
        sizes[i] += 1
    return sizes


def split_indices(n, ratios=(5, 1, 1), seed=0):
    """Cut a seeded permutation of ``range(n)`` into parts sized by ``ratios``.

    Returns one int64 index array per ratio, e.g. ``(train, val, test)``.
    """
    sizes = split_sizes(n, ratios)
    perm = np.random.default_rng(seed).permutation(n)
    return tuple(np.split(perm, np.cumsum(sizes)[:-1]))


def split_dataset(data, ratios=(5, 1, 1), seed=0):
    """Split ``data["x"]``, ``data["y"]`` into ``{"train"|"val"|"test": (x, y)}``."""
    if len(tuple(ratios)) != len(SPLIT_NAMES):
        raise ValueError(f"split_dataset needs 3 ratios (train, val, test), got {ratios!r}")
    x, y = data["x"], data["y"]
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
    parts = split_indices(len(x), ratios, seed)
    return {k: (x[idx], y[idx]) for k, idx in zip(SPLIT_NAMES, parts)}
