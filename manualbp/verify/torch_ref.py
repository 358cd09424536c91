"""The PyTorch reference: each manualbp layer as a ``torch.nn.functional`` computation on the same
arrays, differentiated by autograd. Imported only when a torch comparison is asked for."""
import torch
import torch.nn.functional as F

from .walk import Walker, register


@register("torch", "Linear")
def linear(w, m, x, path):
    v = F.linear(x, w.array(path, "weight"), w.array(path, "bias") if "bias" in m.params else None)
    return w.noise(m, v, path)


@register("torch", "Conv2d")
def conv2d(w, m, x, path):
    v = F.conv2d(x, w.array(path, "weight"), w.array(path, "bias") if "bias" in m.params else None,
                 stride=m.stride, padding=m.padding)
    return w.noise(m, v, path)


@register("torch", "MaxPool2d")
def max_pool2d(w, m, x, path):
    return F.max_pool2d(x, m.kernel_size, m.stride)


@register("torch", "AvgPool2d")
def avg_pool2d(w, m, x, path):
    return F.avg_pool2d(x, m.kernel_size, m.stride)


@register("torch", "GlobalAvgPool2d")
def global_avg_pool2d(w, m, x, path):
    return x.mean(dim=(2, 3))


@register("torch", "Flatten")
def flatten(w, m, x, path):
    return torch.flatten(x, 1)


@register("torch", "ReLU")
def relu(w, m, x, path):
    return F.relu(x)


@register("torch", "LeakyReLU")
def leaky_relu(w, m, x, path):
    return F.leaky_relu(x, m.slope)


@register("torch", "Sigmoid")
def sigmoid(w, m, x, path):
    return torch.sigmoid(x)


@register("torch", "BatchNorm1d", "BatchNorm2d")
def batch_norm(w, m, x, path):
    return F.batch_norm(x, w.array(path, "running_mean").clone(), w.array(path, "running_var").clone(),
                        w.array(path, "weight"), w.array(path, "bias"), training=m.training,
                        momentum=m.momentum, eps=m.eps)


def version():
    return f"torch {torch.__version__}"


def reference(model, x, y, arrays, trainable, eps):
    """Forward and backward in PyTorch. ``arrays``: host arrays by full name (parameters and
    buffers), ``trainable``: the parameter names, ``eps``: ``{noise layer path: host draw}``.
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
