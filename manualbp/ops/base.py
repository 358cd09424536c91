"""The op: a reference pair of plain functions with an explicit cache, fast kernels of the same
signature per backend, and the rules that compute it in PyTorch and JAX -- all registered by the
op object itself, beside its code.

Signatures (every op, reference and fast alike)::

    forward(xp, *inputs, **settings) -> (output, cache)
    backward(xp, d_output, cache, need) -> (d_input_0, d_input_1, ...)

``xp`` is the backend's array module (NumPy or CuPy, :attr:`Backend.xp`).

``need[i]`` is ``None`` when the gradient of input ``i`` is not wanted (a buffer, a layer whose
parameters are not trained now, the first layer's ``dL/dx`` in training) and that gradient is
then returned as ``None``; otherwise it is ``True`` or, for a parameter, the parameter's own
gradient array, which a fast kernel may fill in place and return (a reference returns a new
array; the module copies it in). ``cache`` is whatever ``forward`` kept for ``backward``: one
forward, one cache, one backward.

A rule ``rule(x, *inputs, **settings)`` computes the forward pass in another framework from the
same arrays (``op.rule("torch")``); that framework's autograd then differentiates it, which is
how :mod:`manualbp.verify` checks the hand-written ``backward``. A trace rule
(``op.traces("aten.conv2d.default")``) imports a call of that ATen op in a traced PyTorch
model as a node running the op (:func:`manualbp.verify.from_torch`).
"""

#: every op, in the order they were made (:func:`manualbp.backend.Backend.table` lists them)
OPS = []
FRAMEWORKS = ("torch", "jax")


class Op:
    """One operation. ``inputs`` names its array inputs in order (``("x", "weight", "bias")``);
    ``forward`` / ``backward`` are the reference pair; :meth:`kernel` registers fast ones."""

    def __init__(self, name, inputs, forward, backward):
        self.name, self.inputs = name, tuple(inputs)
        self.forward, self.backward = forward, backward
        self.kernels = {}          # backend name -> (forward, backward)
        self.rules = {}            # framework -> rule
        self.tracers = {}          # traced ATen op name -> trace rule
        self.inexact = {}          # ATen op name -> (how PyTorch falls short of float64, exact rule)
        OPS.append(self)

    def __repr__(self):
        return f"Op({self.name!r})"

    def kernel(self, backend, forward=None, backward=None):
        """Register the fast pair of ``backend`` (``"numpy"`` or ``"cupy"``); a missing half is
        the reference's."""
        self.kernels[backend] = (forward or self.forward, backward or self.backward)
        return self

    def rule(self, framework):
        """Decorator: the function computes this op in ``framework`` (``"torch"`` or ``"jax"``)."""
        if framework not in FRAMEWORKS:
            raise ValueError(f"unknown framework {framework!r}: expected one of {', '.join(FRAMEWORKS)}")

        def register(function):
            self.rules[framework] = function
            return function
        return register

    def traces(self, *aten_names):
        """Decorator: ``rule(call, *args, **kwargs)`` imports a call of one of the named ATen ops
        (``"aten.conv2d.default"``: ``str(node.target)`` in a graph of ``torch.export``) as this
        op (:mod:`manualbp.verify.trace`). ``args`` and ``kwargs`` are the call's own: each tensor
        a :class:`~manualbp.verify.trace.Value` (with its ``shape``), everything else its Python
        value. The rule returns ``(inputs, settings)`` -- the op's inputs in order (Values, or
        ``None`` for an absent optional one) and its settings -- or ``(other_op, inputs,
        settings)`` for a call that another op computes (``x * 2``: ``scale``), or ``(inputs,
        module)`` with a module built on ``call.bk`` that runs the op (a ``Dropout``, which draws
        its own masks), or one Value (the call changes nothing: an alias), or a list of those,
        one per output of a call that returns several (``chunk``, picked by ``getitem``).
        ``call.refuse(what)`` stops the import for a setting the op does not compute."""
        def register(function):
            for name in aten_names:
                self.tracers[name] = function
            return function
        return register

    def inexact_in_torch(self, aten_name, why, exact):
        """Record that PyTorch computes the ATen op ``aten_name`` less precisely than its dtype
        (``why``) and that ``exact(*args, **kwargs)`` computes the call with torch functions
        exactly: a comparison then also runs PyTorch with ``exact`` in its place, and an array
        that agrees with that run differs from PyTorch's only by PyTorch's own error."""
        self.inexact[aten_name] = (why, exact)

    def pair(self, backend, kernels="fast"):
        """``(forward, backward)`` that runs on ``backend`` with ``kernels`` ``"fast"`` or
        ``"reference"``."""
        if kernels == "fast" and backend in self.kernels:
            return self.kernels[backend]
        return self.forward, self.backward


def destination(flag):
    """Where a fast kernel may write a wanted gradient: the array ``need[i]`` gave, or ``None``
    (make a new one) when it gave ``True``."""
    return None if flag is True else flag


def filled(flag, value):
    """The gradient ``need[i]`` (``flag``) that a fast kernel wrote with ``out=destination(flag)``:
    the given array itself (``value``, what the call returned, may be another object on its
    memory, which the module would copy in), or ``value`` when it gave ``True``."""
    return value if flag is True else flag


def put(flag, value):
    """``value`` as the gradient ``need[i]`` (``flag``) asks for: ``None`` when not wanted,
    copied into the given array, or ``value`` itself."""
    if flag is None:
        return None
    if flag is True:
        return value
    flag[...] = value
    return flag
