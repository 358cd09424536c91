"""Rules that are the same in every framework: containers, which only route arrays between
children (``walker.child``) and add branches, and layers written with arithmetic operators alone
(``abs``, ``+``, ``*``, ``/`` call each framework's own functions), so they need no framework
function."""
from .walk import RULES, register


def sequential(w, m, x, path):
    """``Sequential``: the children in order."""
    for name in m.children:
        x = w.child(m, name, x, path)
    return x


def projection(w, m, x, path):
    """``Projection`` (a residual shortcut that changes the shape): ``bn(conv(x))``."""
    return w.child(m, "bn", w.child(m, "conv", x, path), path)


def basic_block(w, m, x, path):
    """``BasicBlock``: ``act2(main(x) + shortcut(x))``, the shortcut the identity when absent."""
    out = x
    for name in ("conv1", "bn1", "act1", "conv2", "bn2"):
        out = w.child(m, name, out, path)
    skip = w.child(m, "shortcut", x, path) if "shortcut" in m.children else x
    return w.child(m, "act2", out + skip, path)


def gaussian_noise(w, m, v, path):
    """``GaussianNoise``: ``v + sigma * eps (+ mu)`` with the engine's draw ``eps``."""
    eps = w.eps(path)
    if eps is not None:
        sigma = w.array(path, "sigma")
        v = v + (abs(sigma) if m.abs_sigma else sigma) * eps           # z = sigma * eps, Eq. (1)
    if "mu" in m.params:
        v = v + w.array(path, "mu")
    return v


def normalize(w, m, x, path):
    """``Normalize``: ``(x - mean) / std`` per channel."""
    shape = (1, m.channels) + (1,) * (x.ndim - 2)
    return (x - w.array(path, "mean").reshape(shape)) / w.array(path, "std").reshape(shape)


for framework in RULES:
    register(framework, "Sequential")(sequential)
    register(framework, "Projection")(projection)
    register(framework, "BasicBlock")(basic_block)
    register(framework, "GaussianNoise")(gaussian_noise)
    register(framework, "Normalize")(normalize)
