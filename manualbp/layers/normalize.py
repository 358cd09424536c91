"""Fixed per-channel normalisation, the first layer of the image models.

Keeping it inside the model lets data, attacks and corruptions all work in pixel space
``[0, 1]``: an attack's ``dL/dx`` from ``model.backward`` is the gradient with respect to pixels.
"""
from ..ops import normalize
from .base import Module


class Normalize(Module):
    """``y = (x - mean) / std`` per channel; nothing is trained.

    Shapes: input and output ``(N, C, H, W)`` (or ``(N, C)``); ``mean`` and ``std`` are
    sequences of ``C`` numbers, kept as the buffers ``mean`` and ``std`` (so checkpoints record
    them). Backward: ``dL/dx = delta / std``.
    """

    def __init__(self, bk, mean, std):
        super().__init__(bk)
        mean, std = [float(m) for m in mean], [float(s) for s in std]
        if len(mean) != len(std) or not mean:
            raise ValueError(f"Normalize needs one mean and one std per channel, got {len(mean)} "
                             f"means and {len(std)} stds")
        if min(std) <= 0:
            raise ValueError(f"Normalize: every std must be positive, got {std}")
        self.channels = len(mean)
        self.buffers["mean"] = bk.asarray(mean)
        self.buffers["std"] = bk.asarray(std)

    op = normalize

    def check(self, x):
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"Normalize expects input (N, {self.channels}, ...), got {tuple(x.shape)}")
