"""The layer protocol shared by every layer, block and model.

A layer holds

* ``params``   -- trained arrays by local name (``"weight"``, ``"sigma"``, ...);
* ``grads``    -- their gradients, written in place by ``backward`` (same names and shapes);
* ``buffers``  -- arrays that are state but not trained (a fixed ``sigma``, running statistics);
* ``children`` -- sub-layers by local name, in forward order.

``forward(x)`` keeps what ``backward`` needs; ``backward(delta, input_grad=True)`` takes
``dL/d(output)``, sets ``grads`` and returns ``dL/d(input)`` -- one step of the paper's Eq. (2)
-- or, when ``input_grad`` is false (nobody needs it: the first layer in training), ``None``
where skipping it saves work (activations and noise layers return it anyway).
A layer only ever changes its ``params`` in place (optimisers and checkpoints write them); its
``grads`` it may replace or overwrite.
While ``param_grads`` is false (:func:`manualbp.model.input_gradient_only`), ``backward`` leaves
``grads`` as they are and computes only what ``dL/d(input)`` needs (attacks, saliency maps).
Full names join the local names with dots: ``"fc1.weight"``, ``"fc1.noise.sigma"``.

Building a layer builds what its backend asks for (:meth:`Backend.implementation`): the class
itself, or with ``kernels="fast"`` the fast kernel registered for it in :mod:`manualbp.kernels`,
a subclass that computes the same thing.
"""


def backward_chain(layers, delta, input_grad=True):
    """Eq. (2) through ``layers`` applied in order: their ``backward`` in reverse, each passing
    ``dL/d(its input)`` to the one before. Without ``input_grad`` the chain ends at its first
    layer with parameters, which skips its ``dL/dx``: the layers below it have nothing to learn
    (e.g. a ``Normalize`` before the first convolution)."""
    first = 0
    if not input_grad:
        first = next((i for i, layer in enumerate(layers) if any(m.params for _, m in layer.modules())),
                     max(len(layers) - 1, 0))
    for i in range(len(layers) - 1, first - 1, -1):
        delta = layers[i].backward(delta, input_grad=input_grad or i > first)
    return delta


class Module:
    """Base class: naming, state and train/eval switches; subclasses write forward/backward."""

    def __new__(cls, bk, *args, **kwargs):
        return super().__new__(bk.implementation(cls))

    def __init__(self, bk):
        self.bk = bk
        self.xp = bk.xp
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.children = {}
        self.training = True
        self.param_grads = True

    @property
    def kind(self):
        """The layer's type by name as built: a fast kernel's is its reference layer's."""
        return self.bk.reference(type(self)).__name__

    def forward(self, x):
        raise NotImplementedError

    def backward(self, delta, input_grad=True):
        raise NotImplementedError

    def add_param(self, name, value):
        """Register a trained array and a zero gradient of its shape."""
        self.params[name] = value
        self.grads[name] = self.xp.zeros_like(value)

    # --- walking the tree ----------------------------------------------------------------
    def modules(self, prefix=""):
        """Yield ``(full name, module)`` for this module and every descendant, parents first."""
        yield prefix, self
        for name, child in self.children.items():
            yield from child.modules(f"{prefix}.{name}" if prefix else name)

    def parameter_slots(self):
        """``[(full name, module, local name)]`` of every trained array, in a fixed order."""
        return [(f"{path}.{key}" if path else key, module, key)
                for path, module in self.modules() for key in module.params]

    def named_parameters(self):
        return {name: module.params[key] for name, module, key in self.parameter_slots()}

    def named_gradients(self):
        """Gradients by full name (those of the last backward pass)."""
        return {name: module.grads[key] for name, module, key in self.parameter_slots()}

    def named_buffers(self):
        return {(f"{path}.{key}" if path else key): array
                for path, module in self.modules() for key, array in module.buffers.items()}

    def parameter_store(self):
        """The :class:`~manualbp.store.ParameterStore` of this model: every parameter in one
        flat array, every gradient gathered into another (made on the first call)."""
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
