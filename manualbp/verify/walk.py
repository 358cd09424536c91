"""Walking a manualbp model in another framework: one rule per layer type, looked up by name.

A rule is ``rule(walker, module, x, path) -> output``: it computes the layer's forward pass from
the same arrays the manualbp layer holds (``walker.array(path, key)``, its parameters or buffers)
and the same noise draw (``walker.eps(path)``), in the mode ``walker.training(module, path)``,
and recurses into children with ``walker.child(module, name, x, path)``. The framework then
differentiates the result itself. A subclass of :class:`Walker` may answer the mode and the
draws otherwise (the PyTorch twin of :mod:`manualbp.verify.torch_module`: its own torch mode,
fresh draws).

Rules are keyed by the exact class name (a subclass may compute something else, so it needs its own
rule); a fast kernel takes the rule of the reference layer it is proven equal to
(:attr:`Module.kind`). Register one for a new layer with :func:`register`.
"""

RULES = {"torch": {}, "jax": {}}


class ConversionError(TypeError):
    """A layer of the model has no rule in the reference framework."""


def join(path, name):
    return f"{path}.{name}" if path else name


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
    """The ``framework`` rule of the layer ``module`` at ``path``; :class:`ConversionError` when
    there is none."""
    name = module.kind
    rule = RULES[framework].get(name)
    if rule is None:
        raise ConversionError(
            f"cannot convert layer {path or '<model>'!r} of type {name}: no {framework} rule "
            f"for it (rules exist for {', '.join(sorted(RULES[framework]))}); add one with "
            f"manualbp.verify.register({framework!r}, {name!r})")
    return rule


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
