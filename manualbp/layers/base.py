"""The module: what a layer, block or model holds -- parameters, buffers, mode -- around the
ops it runs (:mod:`manualbp.ops`).

A module holds

* ``params``   -- trained arrays by local name (``"weight"``, ``"sigma"``, ...);
* ``grads``    -- their gradients, written in place by ``backward`` (same names and shapes);
* ``buffers``  -- arrays that are state but not trained (a fixed ``sigma``, running statistics);
* ``children`` -- sub-modules by local name, in forward order.

Each array is registered once and then only changed in place (``params["weight"][...] = w``):
optimisers, checkpoints and the parameter store hold the same memory, and replacing an array
raises. Full names join the local names with dots: ``"fc1.weight"``, ``"fc1.noise.sigma"``.

A leaf module runs one op (``op``): ``forward(x)`` calls the op's forward through the backend's
table (:meth:`Backend.kernel`) with ``x``, the module's arrays named by the op's inputs and
:meth:`settings`, and keeps the cache; ``backward(delta, input_grad=True)`` hands ``delta =
dL/d(output)`` and that cache to the op's backward -- one step of Eq. (2) -- writes the parameter
gradients into ``grads`` and returns ``dL/d(input)`` (``None`` without ``input_grad``: nobody
needs it, as for the first layer in training). While ``param_grads`` is false
(:func:`manualbp.model.input_gradient_only`) no parameter gradient is computed. A module whose
op computes ``v`` may carry the noise term ``z`` of Eq. (1) as its child ``"noise"``.
"""


def join(path, name):
    """A full name: ``path.name``; ``path`` alone for the empty name (a graph node that is one
    array, :class:`~manualbp.layers.Parameter`)."""
    return f"{path}.{name}" if path and name else path or name


class Arrays(dict):
    """A module's named arrays, each registered once and from then on changed in place only."""

    def __init__(self, what):
        super().__init__()
        self.what = what

    def __setitem__(self, key, value):
        if key in self and self[key] is not value:
            raise ValueError(f"{self.what} {key!r} is already registered: change it in place "
                             f"({self.what}s[{key!r}][...] = value), so that optimisers and checkpoints, "
                             f"which hold its memory, see the change")
        super().__setitem__(key, value)

    def rebind(self, key, value):
        """Make ``value`` (a view holding the same numbers, e.g. of the parameter store) the array."""
        super().__setitem__(key, value)


class Module:
    """Base class: naming, state, train/eval switches and the call of a leaf's op."""

    op = None               # the op a leaf module runs (manualbp.ops)
    arity = 1               # how many of the op's inputs are values flowing in (the rest: arrays)

    def __init__(self, bk):
        self.bk = bk
        self.xp = bk.xp
        self.params = Arrays("param")
        self.grads = Arrays("grad")
        self.buffers = Arrays("buffer")
        self.children = {}
        self.training = True
        self.param_grads = True
        self.cache = None

    @property
    def kind(self):
        """The module's type by name (error messages)."""
        return type(self).__name__

    def add_param(self, name, value):
        """Register a trained array and a zero gradient of its shape."""
        self.params[name] = value
        self.grads[name] = self.xp.zeros_like(value)

    # --- a leaf's op ---------------------------------------------------------------------
    def array(self, key):
        """The module's array for the op input ``key``: a parameter or buffer, else ``None``."""
        return self.params.get(key, self.buffers.get(key))

    def settings(self, training):
        """The op's settings (keyword arguments) in the mode ``training``."""
        return {}

    def check(self, x):
        """Raise a clear error for an input the module cannot take (before any work)."""

    def op_inputs(self, values, array):
        """The op's inputs in order: the ``values`` flowing in, then ``array(key)`` for each
        remaining input key (the module's own arrays: ``self.array``)."""
        return [*values, *[array(key) for key in self.op.inputs[self.arity:]]]

    def forward(self, x):
        """``output = op(x, arrays, settings)`` (+ the noise term ``z`` of Eq. 1)."""
        self.check(x)
        v = self.run(self.op, *self.op_inputs((x,), self.array), **self.settings(self.training))
        return self.children["noise"].forward(v) if "noise" in self.children else v

    def backward(self, delta, input_grad=True):
        """``dL/d(input)`` from ``delta = dL/d(output)`` (Eq. 2); parameter gradients into ``grads``."""
        if "noise" in self.children:
            delta = self.children["noise"].backward(delta)             # fills dL/dsigma, Eq. (3)
        return self.run_backward(delta, input_grad)

    def run(self, op, *inputs, **settings):
        """The forward pass of ``op`` as the backend's table says; keeps its cache for
        :meth:`run_backward`."""
        forward, backward = self.bk.kernel(op)
        out, cache = forward(self.xp, *inputs, **settings)
        self.cache = (op, backward, cache, out.shape)           # backward: the forward's partner
        return out

    def run_backward(self, delta, input_grad=True):
        """The backward pass of the op the last forward ran, on its cache: the parameter
        gradients written into ``grads``, ``dL/d(input)`` returned (a tuple, one per input, for a
        module of several inputs). Each module keeps the cache of its last forward pass, so
        backward differentiates the most recent forward (as often as asked; an earlier one
        through :meth:`Graph.saved_caches`); a ``delta`` of another shape than that pass's output
        stops with an error."""
        op, backward, cache = self.last_pass(delta)
        targets = self.grads if self.param_grads else {}             # a gradient array per parameter
        need = self.value_need(input_grad) + tuple([targets.get(k) for k in op.inputs[self.arity:]])
        grads = backward(self.xp, delta, cache, need)
        for target, grad in zip(need[self.arity:], grads[self.arity:]):
            if target is not None and grad is not target:
                target[...] = grad
        return grads[0] if self.arity == 1 else grads[:self.arity]

    def value_need(self, input_grad):
        """``need`` of the values flowing in: ``input_grad`` is one flag for all of them, or a
        tuple of one flag per value (a graph's node, some of whose inputs need no gradient)."""
        wanted = input_grad if isinstance(input_grad, tuple) else (input_grad,) * self.arity
        return tuple(True if flag else None for flag in wanted)

    def last_pass(self, delta):
        """``(op, backward, cache)`` of the last forward pass, after checking that ``delta``
        fits its output."""
        if self.cache is None:
            raise RuntimeError(f"{self.kind}: backward before forward: run forward first, it keeps "
                               f"what backward needs")
        op, backward, cache, shape = self.cache
        if delta.shape != shape:
            raise ValueError(f"{self.kind}: backward got delta of shape {tuple(delta.shape)}, but the last "
                             f"forward pass gave an output of shape {tuple(shape)}: backward differentiates "
                             f"the most recent forward pass (an earlier one: model.backward(delta, "
                             f"caches=saved), saved = model.saved_caches() after its forward)")
        return op, backward, cache

    # --- walking the tree ----------------------------------------------------------------
    def modules(self, prefix=""):
        """Yield ``(full name, module)`` for this module and every descendant, parents first."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.modules(join(prefix, name))

    def parameter_slots(self):
        """``[(full name, module, local name)]`` of every trained array, in a fixed order."""
        return [(join(path, key), module, key)
                for path, module in self.modules() for key in module.params]

    def named_parameters(self):
        return {name: module.params[key] for name, module, key in self.parameter_slots()}

    def named_gradients(self):
        """Gradients by full name (those of the last backward pass)."""
        return {name: module.grads[key] for name, module, key in self.parameter_slots()}

    def named_buffers(self):
        return {join(path, key): array
                for path, module in self.modules() for key, array in module.buffers.items()}

    def parameter_store(self):
        """The :class:`~manualbp.store.ParameterStore` of this model: every parameter in one
        flat array, every gradient in another (made on the first call)."""
        if getattr(self, "store", None) is None:
            from ..store import ParameterStore
            self.store = ParameterStore(self)
        return self.store

    def state_dict(self):
        """Every parameter and buffer by full name (what a checkpoint stores)."""
        return {**self.named_parameters(), **self.named_buffers()}

    def load_state_dict(self, state):
        """Copy arrays into this model in place; names and shapes must match exactly."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state does not fit this model: missing {missing}, unexpected {unexpected}")
        for name, array in own.items():
            value = state[name]
            if tuple(value.shape) != tuple(array.shape):
                raise ValueError(f"{name}: expected shape {tuple(array.shape)}, got {tuple(value.shape)}")
            array[...] = self.bk.asarray(value, dtype=array.dtype)

    # --- modes ---------------------------------------------------------------------------
    def train(self):
        """Training mode: noise layers draw noise, batch statistics are used."""
        for _, module in self.modules():
            module.training = True
        return self

    def eval(self, noise=None):
        """Evaluation mode. ``noise=True``/``False`` sets whether noise layers still draw noise
        (the randomised model) or not (the mean model); ``None`` keeps each layer's own choice."""
        for _, module in self.modules():
            module.training = False
            if noise is not None and hasattr(module, "eval_noise"):
                module.eval_noise = bool(noise)
        return self
