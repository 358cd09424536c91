"""Batch normalisation (Ioffe & Szegedy, 2015) with its closed-form backward.

One implementation serves dense and convolutional layers: statistics are taken per feature over
the batch axis (``BatchNorm1d``, input ``(N, F)``) or per channel over the batch and spatial axes
(``BatchNorm2d``, input ``(N, C, H, W)``). Conventions follow PyTorch: ``floor = 1e-5`` (PyTorch's
``eps``; here ``eps`` is always the noise draw), running
statistics ``r <- (1 - momentum) r + momentum * batch statistic`` with ``momentum = 0.1``, and the
running variance updated with the unbiased batch variance. Both run the op
:data:`~manualbp.ops.batch_norm`.
"""
from ..ops import batch_norm
from .base import Module


class _BatchNorm(Module):
    """``y = weight * xhat + bias``, ``xhat = (x - mean) / sqrt(var + floor)``.

    Training mode normalises with the statistics of the batch (biased variance) and updates the
    running statistics; evaluation mode normalises with the running statistics.

    Parameters: ``weight`` (scale, ones) and ``bias`` (shift, zeros), both ``(features,)``.
    Buffers: ``running_mean`` (zeros) and ``running_var`` (ones), both ``(features,)``.
    """

    op = batch_norm
    running_statistics = ("running_mean", "running_var")   # buffers estimated from training batches
    ndim = None

    def __init__(self, bk, num_features, momentum=0.1, floor=1e-5):
        super().__init__(bk)
        self.num_features, self.momentum, self.floor = int(num_features), momentum, floor
        self.add_param("weight", bk.full((self.num_features,), 1.0))
        self.add_param("bias", bk.zeros((self.num_features,)))
        self.buffers["running_mean"] = bk.zeros((self.num_features,))
        self.buffers["running_var"] = bk.full((self.num_features,), 1.0)

    def check(self, x):
        if x.ndim != self.ndim or x.shape[1] != self.num_features:
            layout = "(N, F)" if self.ndim == 2 else "(N, C, H, W)"
            raise ValueError(f"{self.kind}({self.num_features}) expects input {layout} "
                             f"with {self.num_features} at axis 1, got {tuple(x.shape)}")
        if self.training and x.size // self.num_features < 2:
            raise ValueError(f"{self.kind} needs more than one value per feature "
                             f"in training mode, got input {tuple(x.shape)}")

    def settings(self, training):
        return {"training": training, "momentum": self.momentum, "floor": self.floor}


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of dense features: input ``(N, F)``, statistics over the batch."""

    ndim = 2


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of feature maps: input ``(N, C, H, W)``, statistics per channel over
    the batch and both spatial axes."""

    ndim = 4
