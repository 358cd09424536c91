"""Models as graphs: forward in topological order, backward in reverse, where the deltas of a
value used twice add up (Eq. 2 through a sum)."""
from .. import ops
from .base import Module

#: the name of a graph's input among its values
INPUT = "input"


class Add(Module):
    """Two branches join: ``a + b`` (a residual block's sum). Backward hands ``delta`` to both."""

    op = ops.add
    arity = 2

    def forward(self, a, b):
        return self.run(self.op, a, b)


def has_parameters(module):
    return any(m.params for _, m in module.modules())


class Graph(Module):
    """A directed acyclic graph of modules.

    ``nodes``: ``(name, module, inputs)`` triples in an order where every input comes first;
    ``inputs`` names the values the module takes -- ``"input"`` (the graph's input) or earlier
    nodes, none for a node that is an array (:class:`~manualbp.layers.Parameter`) -- and the
    value of ``output`` (default: the last node) is the graph's. Each module becomes the child
    ``name``.

    ``forward`` runs the nodes in order. ``backward`` runs them in reverse, each handed ``delta =
    dL/d(its value)``; where a value feeds several nodes, its delta is the sum of theirs (Eq. 2:
    ``delta_j = sum_i theta_ij phi'(v_j) delta_i`` sums over every neuron ``i`` that reads ``j``).
    Only nodes from which backpropagation reaches something wanted run backward: without
    ``input_grad`` (training), a node with no parameters at or before it is skipped, and the
    first layer with parameters computes no ``dL/dx`` (e.g. a ``Normalize`` before the first
    convolution). ``input_shape`` (per sample), when given, makes ``forward`` check its input.
    """

    def __init__(self, bk, nodes, input_shape=None, output=None):
        super().__init__(bk)
        self.edges = []
        for name, module, inputs in nodes:
            inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
            unknown = [i for i in inputs if i != INPUT and i not in self.children]
            if unknown or name in self.children or name == INPUT:
                raise ValueError(f"graph node {name!r}: its inputs {unknown} are not earlier nodes, or the "
                                 f"name is taken")
            self.children[name] = module
            self.edges.append((name, inputs))
        if output is not None and output not in self.children:
            raise ValueError(f"graph output {output!r} is not one of its nodes")
        self.chosen_output = output
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.forwarded = False
        self.reached = {}

    @property
    def output(self):
        """The node whose value the graph returns: ``output`` as given, else the last node."""
        return self.chosen_output or (self.edges[-1][0] if self.edges else INPUT)

    def check_input(self, x):
        """Raise a clear error for input that is not an array of the backend, or of the wrong
        shape or dtype, or with NaN/inf values (a :meth:`~manualbp.backend.Backend.require`
        check: deferred on the GPU)."""
        if not isinstance(x, self.xp.ndarray):
            raise TypeError(f"model input must be an array of the backend ({self.bk.name}), got "
                            f"{type(x).__name__}; convert with backend.asarray(x)")
        expected = "(N, " + ", ".join(map(str, self.input_shape)) + ")"
        if tuple(x.shape[1:]) != self.input_shape or x.ndim != len(self.input_shape) + 1:
            raise ValueError(f"model input must have shape {expected}, got {tuple(x.shape)}")
        if x.dtype != self.bk.dtype:
            raise TypeError(f"model input must have dtype {self.bk.dtype.name} (the backend's), "
                            f"got {x.dtype}; convert with backend.asarray(x)")
        self.bk.require(self.xp.isfinite(x).all(), "model input contains NaN or infinite values")

    def forward(self, x):
        if self.input_shape is not None:
            self.check_input(x)
        values = {INPUT: x}
        for name, inputs in self.edges:
            values[name] = self.children[name].forward(*[values[i] for i in inputs])
        self.forwarded = True
        return values[self.output]

    def wanted(self, input_grad):
        """``{value: whether backpropagation must reach the node that made it}`` (worked out
        once per graph and ``input_grad``: the nodes and their parameters are fixed when built)."""
        key = bool(input_grad)
        if key not in self.reached:
            wanted = {INPUT: key}
            for name, inputs in self.edges:
                wanted[name] = has_parameters(self.children[name]) or any(wanted[i] for i in inputs)
            self.reached[key] = wanted
        return self.reached[key]

    def saved_caches(self):
        """What every module kept from the last forward pass: hand it to ``backward(delta,
        caches=...)`` to differentiate that pass after later ones (a loss on clean and on
        adversarial logits: forward both, then a backward for each). References, not copies."""
        return {m: m.cache for _, m in self.modules() if m.cache is not None}

    def backward(self, delta, input_grad=True, caches=None):
        """Propagate the residual error from the output down to the input: Eq. (2) node by node
        in reverse, deltas adding up where a value was used twice. Returns ``dL/dx`` (``None``
        without ``input_grad``). Differentiates the most recent forward pass, or the one whose
        :meth:`saved_caches` are given (each module keeps them from then on). Parameter
        gradients are written, not added: a sum over two passes is the caller's."""
        if not self.forwarded:
            raise RuntimeError("backward before forward: run model.forward(x) first, it keeps what "
                               "backward needs")
        for module, cache in (caches or {}).items():
            module.cache = cache
        wanted, deltas = self.wanted(input_grad), {self.output: delta}
        add = self.bk.kernel(ops.add)[0]
        for name, inputs in reversed(self.edges):
            d = deltas.pop(name, None)
            if d is None or not wanted[name]:
                continue
            reach = tuple(wanted[i] for i in inputs)           # which of the node's inputs need dL/d(input)
            grads = self.children[name].backward(d, input_grad=reach[0] if len(inputs) == 1 else reach)
            for i, g in zip(inputs, grads if len(inputs) != 1 else (grads,)):
                if wanted[i] and g is not None:
                    deltas[i] = add(self.xp, deltas[i], g)[0] if i in deltas else g   # deltas add (Eq. 2) by the add op
        return deltas.get(INPUT) if input_grad else None


class Sequential(Graph):
    """A chain: each layer takes the previous one's output -- the graph of Eq. (2) as a loop.

    ``layers``: ``(name, layer)`` pairs (or a dict), e.g. ``[("fc1", Linear(...)), ("act1",
    ReLU(bk)), ...]``. ``input_shape`` (per sample, e.g. ``(784,)``), when given, makes ``forward``
    check its input: shape, dtype and finiteness -- the checks a top-level model needs.
    """

    def __init__(self, bk, layers, input_shape=None):
        layers = list(dict(layers).items())
        previous = [INPUT] + [name for name, _ in layers[:-1]]
        super().__init__(bk, [(name, layer, before) for (name, layer), before in zip(layers, previous)],
                         input_shape)
