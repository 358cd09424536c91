"""Any manualbp model as a ``torch.nn.Module``: :func:`to_torch`.

The twin runs the same walker and the same PyTorch rules (each op's, ``op.rule("torch")``) as
:func:`~manualbp.verify.verify_model`, on its own copies of the model's arrays: its parameters
(``sigma`` and ``mu`` included) are ``torch.nn.Parameter`` s and its buffers (batch norm's
running statistics, a fixed ``sigma``, normalisation constants) torch buffers, under the
manualbp full names (``"fc1.weight"``, ``"fc1.noise.sigma"``). Its own torch mode
(``train()`` / ``eval()``) decides what a manualbp layer's mode decides: batch statistics, which
update its running statistics in place, or the running statistics; and which noise layers draw
``eps ~ N(0, 1)`` of their pre-activation's shape with torch's generator -- in training mode
every noise layer that is not ``"off"``, in evaluation mode those whose ``eval_noise`` is set
(copied from the model; an attribute of the layer's submodule). The layers' types and settings
(strides, ``abs_sigma``, ...) are read from the model itself, which the twin walks.
"""
import torch

from .walk import Walker, join, rule_of

__all__ = ["TorchTwin", "to_torch"]


def to_torch(model, dtype=None, device="cpu"):
    """A :class:`TorchTwin` of ``model``: copies of its parameters and buffers in ``dtype`` (a
    ``torch.dtype`` or its name; default the model's dtype) on ``device``, each layer in the mode
    it has in ``model``."""
    if dtype is None:
        dtype = model.bk.dtype.name
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    return TorchTwin(model, dtype, torch.device(device))


class Layer(torch.nn.Module):
    """One layer of a twin: the manualbp layer's arrays, its children as submodules."""

    def __init__(self, layer, dtype, device, path=""):
        super().__init__()
        self.kind, self.path = layer.kind, path
        self.training = layer.training
        if hasattr(layer, "eval_noise"):
            self.eval_noise = layer.eval_noise

        def copy(array):
            return torch.tensor(layer.bk.to_host(array), dtype=dtype, device=device).contiguous()

        for key, array in layer.params.items():          # an array node's (local name ""): "value"
            self.register_parameter(key or "value", torch.nn.Parameter(copy(array)))
        for key, array in layer.buffers.items():
            self.register_buffer(key or "value", copy(array))
        for name, child in layer.children.items():       # a torch name has no dots: "layer1/0/conv1/weight"
            self.add_module(name.replace(".", "/"), Layer(child, dtype, device, join(path, name)))

    def extra_repr(self):
        return self.kind


class TorchTwin(Layer):
    """A manualbp model in PyTorch (see the module docstring), built by :func:`to_torch`; its
    submodules are the model's layers, named as there."""

    def __init__(self, model, dtype, device):
        super().__init__(model, dtype, device)
        self._model = model
        self._nodes = {node.path: node for node in self.modules() if isinstance(node, Layer)}
        self._rules = {path: rule_of("torch", layer, path) for path, layer in model.modules()}
        layers = dict(model.modules())
        self._slots = [(join(path, key), node._parameters if key in layers[path].params else node._buffers, key or "value")
                       for path, node in self._nodes.items() for key in [*layers[path].params, *layers[path].buffers]]

    def arrays(self):
        """Every parameter and buffer of the twin by the model's full names."""
        return {name: store[key] for name, store, key in self._slots}

    def forward(self, x, eps=None):
        """The logits of ``x``. ``eps``: ``{noise layer path: draw}``, the draws of those noise
        layers that draw, instead of fresh ones (e.g. the manualbp model's, by
        :func:`~manualbp.model.noise_layers` path)."""
        return TwinWalker(self, self.arrays(), eps or {}, len(x)).run(self._model, x)


class TwinWalker(Walker):
    """The walk of a twin's forward pass: each layer's rule looked up once, when the twin was
    built; the modes are the twin's layers'; noise and dropout masks drawn by torch."""

    def __init__(self, twin, arrays, eps, batch):
        super().__init__("torch", arrays, eps)
        self.nodes, self.rules_at, self.batch = twin._nodes, twin._rules, batch

    def run(self, module, x, path=""):
        return self.rules_at[path](self, module, x, path)

    def training(self, module, path):
        return self.nodes[path].training

    def eps(self, path):
        node = self.nodes[path]
        sigma = self.arrays.get(join(path, "sigma"))
        if sigma is None or not (node.training or node.eval_noise):
            return None
        held = self.draws.get(path)
        if held is not None:
            return torch.as_tensor(held, dtype=sigma.dtype, device=sigma.device)
        return torch.randn((self.batch, *sigma.shape), dtype=sigma.dtype, device=sigma.device)

    def mask_like(self, module, path, x):
        """A fresh mask drawn by torch for a dropout layer of the twin in training mode."""
        if not self.nodes[path].training or module.p == 0:
            return None
        return (torch.rand_like(x) >= module.p).to(x.dtype) / (1 - module.p)
