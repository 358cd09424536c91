"""Rules for containers, the same in every framework: they only route arrays between children
(``walker.child``) and add branches, so they need no framework function."""
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


for framework in RULES:
    register(framework, "Sequential")(sequential)
    register(framework, "Projection")(projection)
    register(framework, "BasicBlock")(basic_block)
