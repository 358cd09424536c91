"""``softmax_cross_entropy``: the loss ``L`` and the seed ``e = dL/dx_tau`` of Eq. (2)."""
from .base import Op


def cross_entropy_forward(xp, logits, labels, weights=None):
    """The mean over the batch of ``-log softmax(logits)[label]`` (or of ``w_n`` times it),
    computed stably by log-sum-exp: ``logits`` ``(N, K)``, integer ``labels`` ``(N,)``,
    ``weights`` ``(N,)`` or ``None``; the loss is a 0-d array (no host synchronisation). The
    cache ends with the per-sample losses ``(N,)``."""
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
    losses = -log_p[xp.arange(n), labels]                           # per sample, (N,)
    loss = losses.mean() if weights is None else (weights * losses).mean()
    return loss, (xp.exp(log_p), labels, weights, losses)


def cross_entropy_backward(xp, d_loss, cache, need):
    """``e = dL/dlogits = (softmax(logits) - onehot(labels)) / N`` (times ``w_n``), the seed of
    Eq. (2): ``delta`` already carries the ``1/N`` of the mean, so Eq. (3) sums over the batch."""
    p, labels, weights, _ = cache
    n = p.shape[0]
    e = p.copy()                                                    # e = dL/dx_tau, the seed of Eq. (2):
    e[xp.arange(n), labels] -= 1                                    # softmax - onehot
    e /= n                                                          # of the mean over the batch
    if weights is not None:
        e *= weights[:, None]                                       # of (1/N) sum_n w_n CE_n
    if d_loss is not None and d_loss != 1:
        e *= d_loss
    return e, None, None


softmax_cross_entropy = Op("softmax_cross_entropy", ("logits", "labels", "weights"),
                           cross_entropy_forward, cross_entropy_backward)
