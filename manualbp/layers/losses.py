"""Softmax cross-entropy: the loss ``L`` and the seed ``e = dL/dx_tau`` of Eq. (2)."""


class SoftmaxCrossEntropy:
    """Mean over the batch of ``-log softmax(logits)[label]``, computed stably (log-sum-exp).

    Shapes: ``logits`` ``(N, K)``; ``labels`` integer ``(N,)`` in ``0 .. K-1``. The loss is a
    0-d array (no host synchronisation); ``backward()`` returns ``e = (softmax - onehot) / N``
    of shape ``(N, K)``, so ``delta`` already carries the ``1/N`` of the mean and Eq. (3) sums
    over the batch.

    ``weights`` (optional, ``(N,)``): the loss is ``(1/N) sum_n w_n CE_n`` instead, and each
    row of ``e`` is scaled by its ``w_n`` (a mix of clean and adversarial images, the
    per-image constants of L-BFGS).
    """

    def __init__(self, bk):
        self.bk = bk
        self.xp = bk.xp

    def forward(self, logits, labels, weights=None):
        xp = self.xp
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
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        self.p = xp.exp(log_p)
        self.labels = labels
        self.losses = -log_p[xp.arange(n), labels]           # per sample, (N,)
        self.weights = weights
        return self.losses.mean() if weights is None else (weights * self.losses).mean()

    def backward(self):
        """``e = dL/dlogits = (softmax(logits) - onehot(labels)) / N`` -- the seed of Eq. (2)."""
        n = self.p.shape[0]
        e = self.p.copy()                                               # e = dL/dx_tau, the seed of Eq. (2):
        e[self.xp.arange(n), self.labels] -= 1                          # softmax - onehot
        e /= n                                                          # of the mean over the batch
        if self.weights is not None:
            e *= self.weights[:, None]                                  # of (1/N) sum_n w_n CE_n
        return e
