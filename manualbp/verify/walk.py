"""Walking a manualbp model in another framework: one rule per layer type, looked up by name.

A rule is ``rule(walker, module, x, path) -> output``: it computes the layer's forward pass from
the same arrays the manualbp layer holds (``walker.array(path, key)``, its parameters or buffers)
and the same noise draw (``walker.eps(path)``), and recurses into children with
``walker.child(module, name, x, path)``. The framework then differentiates the result itself.

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


class Walker:
    """Runs a model's forward pass with the rules of ``framework``.

    ``arrays``: the framework's arrays by full name (parameters as differentiable leaves, buffers
    as constants); ``eps``: ``{noise layer path: draw}`` of every noise layer that drew noise.
    """

    def __init__(self, framework, arrays, eps):
        self.framework, self.rules = framework, RULES[framework]
        self.arrays, self.draws = arrays, eps

    def run(self, module, x, path=""):
        name = module.kind
        rule = self.rules.get(name)
        if rule is None:
            raise ConversionError(
                f"cannot verify layer {path or '<model>'!r} of type {name}: no {self.framework} rule "
                f"for it (rules exist for {', '.join(sorted(self.rules))}); add one with "
                f"manualbp.verify.register({self.framework!r}, {name!r})")
        return rule(self, module, x, path)

    def child(self, module, name, x, path):
        return self.run(module.children[name], x, join(path, name))

    def noise(self, module, v, path):
        """``v`` through the module's noise child (the ``z`` of Eq. 1), if it has one."""
        return self.child(module, "noise", v, path) if "noise" in module.children else v

    def array(self, path, key):
        return self.arrays[join(path, key)]

    def eps(self, path):
        return self.draws.get(path)
