"""PyTorch: :func:`reference`, the forward and backward pass in PyTorch of a manualbp model
through its ops' torch rules (``op.rule("torch")`` beside each op's code, :mod:`manualbp.ops`).
Imported only when torch is asked for."""
import torch
import torch.nn.functional as F

from .walk import Walker


def version():
    return f"torch {torch.__version__}"


def reference(model, x, y, arrays, trainable, eps):
    """Forward and backward in PyTorch on copies of ``arrays``: host arrays by full name
    (parameters and buffers); ``trainable``: the parameter names, ``eps``: ``{noise layer path:
    host draw}``.
    Returns host arrays ``{"logits", "loss", "input", "grads": {name: dL/dparam}}``."""
    tensors = {name: torch.from_numpy(a.copy()).requires_grad_(name in trainable)
               for name, a in arrays.items()}
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    walker = Walker("torch", tensors, {path: torch.from_numpy(e.copy()) for path, e in eps.items()})
    logits = walker.run(model, xt)
    loss = F.cross_entropy(logits, torch.from_numpy(y.astype("int64")))
    leaves = [tensors[name] for name in trainable] + [xt]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return {"logits": logits.detach().numpy(), "loss": loss.detach().numpy(),
            "input": grads[-1].numpy(),
            "grads": {name: g.numpy() for name, g in zip(trainable, grads[:-1])}}
