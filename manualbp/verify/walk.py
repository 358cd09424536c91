"""Walking a manualbp model in another framework.

A leaf module runs its op with the op's rule for the framework (``op.rule("torch")`` beside the
op's code, :mod:`manualbp.ops`), on the same arrays the module holds (``walker.array(path,
key)``), the same noise draw (``walker.eps(path)``) and dropout mask, in the mode
``walker.training(module, path)``; a graph routes values between its nodes as its own forward
does. The framework then differentiates the result itself. A subclass of :class:`Walker` may
answer the mode and the draws otherwise (the PyTorch twin of
:mod:`manualbp.verify.torch_module`: its own torch mode, fresh draws).

A module of your own whose ``forward`` is not one op (no ``op``) can still be walked: register a
rule ``rule(walker, module, x, path) -> output`` for its class with :func:`register`.
"""

from ..layers.base import join

RULES = {"torch": {}, "jax": {}}


class ConversionError(TypeError):
    """A layer of the model has no rule in the reference framework."""


def register(framework, *type_names):
    """Decorator: use the function as the ``framework`` rule for layers of the named types."""
    if framework not in RULES:
        raise ValueError(f"unknown framework {framework!r}: expected one of {', '.join(RULES)}")

    def decorate(rule):
        for name in type_names:
            RULES[framework][name] = rule
        return rule
    return decorate


def rule_of(framework, module, path=""):
    """The ``framework`` rule of the module at ``path``: a graph's routing, a leaf's op rule, or
    one registered for its class; :class:`ConversionError` when there is none."""
    from ..layers import Graph
    if isinstance(module, Graph):
        return graph
    registered = RULES[framework].get(module.kind)
    if registered is not None:
        return registered
    if module.op is not None and framework in module.op.rules:
        return leaf
    what = f"op {module.op.name!r} has no {framework} rule" if module.op is not None else "it runs no op"
    raise ConversionError(
        f"cannot convert layer {path or '<model>'!r} of type {module.kind}: {what}; give the op one with "
        f"@op.rule({framework!r}), or register a rule for the module with "
        f"manualbp.verify.register({framework!r}, {module.kind!r})")


def graph(w, m, x, path):
    """A graph: its nodes in order, each on the values it takes, as :meth:`Graph.forward` does."""
    from ..layers.graph import INPUT
    values = {INPUT: x}
    for name, inputs in m.edges:
        xs = [values[i] for i in inputs]
        values[name] = w.child(m, name, xs[0] if len(xs) == 1 else tuple(xs), path)
    return values[m.output]


def leaf(w, m, x, path):
    """A leaf: its op's rule on the module's arrays and settings (+ its noise child, Eq. 1)."""
    xs = x if m.arity > 1 else (x,)
    inputs = m.op_inputs(xs, lambda key: w.input(m, path, key, xs[0]))
    v = m.op.rules[w.framework](*inputs, **m.settings(w.training(m, path)))
    return w.noise(m, v, path)


def array_node(w, m, x, path):
    """A graph node that is one array (:class:`~manualbp.layers.Parameter`, ``Constant``):
    the framework's array of that name."""
    return w.arrays[path]


for _framework in RULES:
    RULES[_framework]["Parameter"] = RULES[_framework]["Constant"] = array_node


class Walker:
    """Runs a model's forward pass with the rules of ``framework``.

    ``arrays``: the framework's arrays by full name (parameters as differentiable leaves, buffers
    as constants; batch norm's running statistics are updated in place in training mode, as the
    framework's batch norm does); ``eps``: ``{noise layer path: draw}`` of every noise layer that
    drew noise.
    """

    def __init__(self, framework, arrays, eps):
        self.framework = framework
        self.arrays, self.draws = arrays, eps

    def run(self, module, x, path=""):
        return rule_of(self.framework, module, path)(self, module, x, path)

    def child(self, module, name, x, path):
        return self.run(module.children[name], x, join(path, name))

    def noise(self, module, v, path):
        """``v`` through the module's noise child (the ``z`` of Eq. 1), if it has one."""
        return self.child(module, "noise", v, path) if "noise" in module.children else v

    def array(self, path, key):
        return self.arrays[join(path, key)]

    def input(self, module, path, key, x):
        """The array the op input ``key`` of the module at ``path`` takes: a noise draw, a
        dropout mask (as an array of ``x``'s kind), else its parameter or buffer (``None`` when
        it has none, e.g. no bias)."""
        if key == "eps":
            return self.eps(path)
        if key == "mask":
            return self.mask_like(module, path, x)
        return self.arrays.get(join(path, key))

    def mask_like(self, module, path, x):
        """The scaled mask the dropout layer at ``path`` applied in its last forward pass (as
        an array like ``x``), ``None`` when it applied none."""
        mask = self.mask(module, path)
        if mask is None:
            return None
        if self.framework == "torch":
            import torch
            return torch.as_tensor(mask, dtype=x.dtype)
        import jax.numpy as jnp
        return jnp.asarray(mask, dtype=x.dtype)

    def training(self, module, path):
        """Whether the layer at ``path`` runs in training mode (batch statistics): the manualbp
        layer's own mode."""
        return module.training

    def eps(self, path):
        """The draw of the noise layer at ``path``, ``None`` when it draws no noise."""
        return self.draws.get(path)

    def mask(self, module, path):
        """The scaled mask the dropout layer at ``path`` applied in its last forward pass (host),
        ``None`` when it applied none (evaluation mode)."""
        return None if module.applied is None else module.bk.to_host(module.applied)
