"""Softmax cross-entropy: the loss ``L`` and the seed ``e = dL/dx_tau`` of Eq. (2)."""
from ..ops import softmax_cross_entropy


class SoftmaxCrossEntropy:
    """Mean over the batch of ``-log softmax(logits)[label]``, computed stably (log-sum-exp).

    Shapes: ``logits`` ``(N, K)``; ``labels`` integer ``(N,)`` in ``0 .. K-1``, an array of the
    backend. The loss is a 0-d array (no host synchronisation); ``backward()`` returns
    ``e = (softmax - onehot) / N`` of shape ``(N, K)``, so ``delta`` already carries the ``1/N`` of
    the mean and Eq. (3) sums over the batch.

    ``weights`` (optional, ``(N,)``): the loss is ``(1/N) sum_n w_n CE_n`` instead, and each
    row of ``e`` is scaled by its ``w_n`` (a mix of clean and adversarial images, the
    per-image constants of L-BFGS). Runs the op :data:`~manualbp.ops.softmax_cross_entropy`.
    """

    def __init__(self, bk):
        self.bk = bk
        self.xp = bk.xp
        self.cache = None

    def check(self, logits, labels):
        xp = self.xp
        for name, a in (("logits", logits), ("labels", labels)):
            if not isinstance(a, xp.ndarray):
                raise TypeError(f"{name} must be an array of the backend ({self.bk.name}), got "
                                f"{type(a).__name__}; convert with backend.asarray({name}, ...)")
        if logits.ndim != 2:
            raise ValueError(f"logits must be (N, classes), got shape {tuple(logits.shape)}")
        n, k = logits.shape
        if n == 0:
            raise ValueError("the loss needs at least one sample, got an empty batch (0, classes)")
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},) to match the logits, got {tuple(labels.shape)}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
        self.bk.require(xp.logical_and(labels.min() >= 0, labels.max() < k), f"labels must lie in 0..{k - 1}",
                        lambda: f", got values in {int(labels.min())}..{int(labels.max())}")

    def forward(self, logits, labels, weights=None):
        """The loss ``L`` (0-d array)."""
        self.check(logits, labels)
        forward, _ = self.bk.kernel(softmax_cross_entropy)
        loss, self.cache = forward(self.xp, logits, labels, weights)
        return loss

    @property
    def losses(self):
        """The per-sample losses ``(N,)`` of the last :meth:`forward` (the last entry of the cache)."""
        return None if self.cache is None else self.cache[-1]

    def backward(self):
        """``e = dL/dlogits`` of the last :meth:`forward` -- the seed of Eq. (2)."""
        if self.cache is None:
            raise RuntimeError("SoftmaxCrossEntropy.backward before forward: run forward(logits, labels) "
                               "first, it keeps what backward needs")
        _, backward = self.bk.kernel(softmax_cross_entropy)
        return backward(self.xp, 1, self.cache, (True, None, None))[0]
