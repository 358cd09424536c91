"""Dropout (Srivastava et al. 2014), inverted as in PyTorch: in training each element is kept
with probability ``1 - p`` and scaled by ``1 / (1 - p)``; in evaluation the layer is the identity.

Shapes: any; output and gradients have the shape of the input.
"""
from ..ops import dropout
from .base import Module


class Dropout(Module):
    """``x = v * mask``, ``mask = 1[u >= p] / (1 - p)`` with ``u ~ U(0, 1)`` drawn by the backend
    in training; ``dL/dv = mask * delta``. With ``hold_mask`` the layer reuses ``self.mask`` (a
    mask set from outside, e.g. the one PyTorch drew, for a comparison)."""

    def __init__(self, bk, p=0.5):
        super().__init__(bk)
        if not 0 <= p < 1:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p, self.mask, self.hold_mask = float(p), None, False

    op = dropout

    def array(self, key):
        return self.applied if key == "mask" else super().array(key)

    def forward(self, v):
        """Draw the mask in training (unless held); ``v * mask``, or ``v`` in evaluation."""
        self.applied = None
        if self.training and self.p > 0:
            if not self.hold_mask:
                keep = self.bk.uniform(0, 1, v.shape) >= self.p
                self.mask = keep.astype(v.dtype) / (1 - self.p)   # kept elements scaled by 1 / (1 - p)
            self.applied = self.mask
        return super().forward(v)

    def __repr__(self):
        return f"Dropout(p={self.p})"
