"""Any PyTorch model as a manualbp model, and every gradient of the two compared.

:func:`from_torch` builds a manualbp model with the structure, weights and buffers of a
``torch.nn.Module``, by the import rule of each module type (an op's, beside its code in
:mod:`manualbp.ops`, or a container's in :mod:`manualbp.verify.torch_ref`);
:func:`compare_torch` runs the user's module itself (autograd) and that model (the hand-written
backward) on the same input and labels and reports, per tensor, the relative and the absolute
error. Imported only when it is used (it imports torch).
"""
import copy

import torch

from ..backend import get_backend
from ..layers import SoftmaxCrossEntropy
from ..model import Sequential
from .compare import TOLERANCES, Report, compare
from .torch_ref import import_rules
from .walk import ConversionError, join

__all__ = ["Importer", "compare_torch", "convert", "from_torch"]


class Importer:
    """Builds manualbp layers from torch modules on backend ``bk`` by their import rules; records,
    for every array it copies, the torch name it came from (``names``: manualbp full name ->
    torch full name) and, for every layer, the torch module it mirrors (``sources``)."""

    def __init__(self, bk):
        self.bk, self.names, self.sources = bk, {}, {}

    def layer(self, module, path, where=None):
        """The manualbp layer of ``module`` (at torch path ``path``; ``where``: its manualbp path,
        default the same)."""
        kind, rules = type(module).__name__, import_rules()
        rule = rules.get(kind)
        if rule is None:
            raise ConversionError(f"cannot import {path or '<model>'!r} of type {kind}: supported are "
                                  f"{', '.join(sorted(rules))}")
        where = path if where is None else where
        layer = rule(self, module, path, where)
        self.sources[where] = module
        return layer

    def copy(self, layer, store, key, tensor, where, path):
        """Copy ``tensor`` into ``layer``'s ``store`` (``"params"`` or ``"buffers"``) under ``key``."""
        getattr(layer, store)[key][...] = self.bk.asarray(tensor.detach().cpu().numpy())
        self.names[join(where, key)] = join(path, key)

    def weights(self, layer, module, path, where):
        """Copy the module's ``weight`` and ``bias`` (those it has) into ``layer``'s parameters."""
        for key in ("weight", "bias"):
            if getattr(module, key, None) is not None:
                self.copy(layer, "params", key, getattr(module, key), where, path)

    def fill(self, block, where, name, module, path):
        """Import ``module`` into the layer ``name`` (dotted) that the block at ``where`` built
        itself: the same arrays and settings (batch norm's momentum and floor)."""
        target = block
        for part in name.split("."):
            target = target.children[part]
        source = self.layer(module, path, join(where, name))
        for store in ("params", "buffers"):
            for key, array in getattr(source, store).items():
                getattr(target, store)[key][...] = array
        for attr in ("momentum", "floor"):
            if hasattr(source, attr):
                setattr(target, attr, getattr(source, attr))


def convert(module, input_shape, backend=None):
    """``(model, names)``: the manualbp model of ``module`` for inputs of shape ``(N,
    *input_shape)`` on ``backend`` (default: NumPy, float64), each layer in the mode (training or
    evaluation) of the torch module it mirrors, and ``names``: manualbp full name -> torch full
    name of every parameter and buffer copied."""
    bk = backend or get_backend("numpy", "float64", 0)
    imp = Importer(bk)
    layer = imp.layer(module, "")
    if isinstance(layer, Sequential):
        model, prefix = layer, ""
        model.input_shape = tuple(input_shape)
    else:                                     # a single layer: a model of one layer, "module"
        model, prefix = Sequential(bk, [("module", layer)], input_shape=input_shape), "module"
    names = {join(prefix, k): v for k, v in imp.names.items()}
    mode = {join(prefix, k): m.training for k, m in imp.sources.items()}
    for name, sub in model.modules():         # parents first: a layer without a torch module of
        parent = name.rsplit(".", 1)[0] if "." in name else ""     # its own takes its parent's mode
        sub.training = mode.setdefault(name, mode.get(parent, module.training))
    return model, names


def from_torch(module, input_shape, backend=None):
    """A manualbp model with the structure, weights and buffers of the ``torch.nn.Module``
    ``module`` (see :func:`convert`). A module of a type without an import rule stops
    the import with one line naming its path, its type and the supported types."""
    return convert(module, input_shape, backend)[0]


def compare_torch(module, x, y, dtype="float64", rtol=None, atol=None, kernels="fast"):
    """Run ``module`` (a copy in ``dtype``; the module itself is left as it is) and its manualbp
    import on the same input ``x`` and labels ``y``, in the mode the module is in, and compare
    the output, the mean cross-entropy loss, every parameter gradient, ``dL/dx`` and the batch
    norm running statistics after the pass. Dropout in training mode uses the masks the torch run
    drew. Returns a :class:`~manualbp.verify.Report` (rows named as in ``module``)."""
    twin = copy.deepcopy(module).to(getattr(torch, dtype))
    bk = get_backend("numpy", dtype, 0, kernels)
    x = torch.as_tensor(x).to(getattr(torch, dtype)).detach()
    model, names = convert(twin, tuple(x.shape[1:]), bk)
    masks = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, p=p: masks.__setitem__(p, (out != 0).to(out.dtype) / (1 - mod.p)))
             for p, m in twin.named_modules() if type(m).__name__ == "Dropout" and m.training and m.p > 0]
    xt = x.clone().requires_grad_(True)
    yt = torch.as_tensor(y, dtype=torch.int64)
    out = twin(xt)
    loss = torch.nn.functional.cross_entropy(out, yt)
    loss.backward()
    for hook in hooks:
        hook.remove()
    layers = dict(model.modules())
    for path, mask in masks.items():
        layer = layers[path if path in layers else join("module", path)]
        layer.mask, layer.hold_mask = bk.asarray(mask.detach().numpy()), True
    params = dict(twin.named_parameters())
    theirs = {"output": out.detach().numpy(), "loss": loss.detach().numpy(), "input": xt.grad.numpy()}
    theirs.update({name: (p.grad if p.grad is not None else torch.zeros_like(p)).numpy()
                   for name, p in params.items()})
    statistics = [n for n in names.values() if n.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    buffers = dict(twin.named_buffers())
    theirs.update({name: buffers[name].numpy() for name in statistics})

    loss_layer = SoftmaxCrossEntropy(bk)
    logits = model.forward(bk.asarray(x.numpy()))
    value = loss_layer.forward(logits, bk.asarray(yt.numpy(), dtype="int64"))
    grad_x = model.backward(loss_layer.backward())
    ours = {"output": logits, "loss": value, "input": grad_x}
    ours.update({names[n]: g for n, g in model.named_gradients().items()})
    ours.update({names[n]: b for n, b in model.named_buffers().items() if names.get(n) in statistics})
    default_rtol, default_atol = TOLERANCES[dtype]
    rtol, atol = default_rtol if rtol is None else rtol, default_atol if atol is None else atol
    report = Report(f"torch {torch.__version__}", dtype, rtol, atol,
                    title=f"{type(module).__name__}: manualbp ({kernels} kernels) vs torch {torch.__version__} "
                          f"autograd ({dtype}, {'training' if module.training else 'evaluation'} mode, "
                          f"batch {len(x)}, rtol {rtol:g}, atol {atol:g})")
    order = ["output", "loss", *params, "input", *statistics]
    report.rows = [compare(name, bk.to_host(ours[name]), theirs[name], rtol, atol) for name in order]
    return report
