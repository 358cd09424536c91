"""PyTorch: the rules that import a torch container of each type into manualbp (``@imports(torch
type)``; an op's own module is imported by the op's rule, ``op.imports``), what
:func:`~manualbp.verify.from_torch` runs, and :func:`reference`, the forward and
backward pass in PyTorch of a manualbp model through its ops' torch rules (``op.rule("torch")``
beside each op's code, :mod:`manualbp.ops`). Imported only when torch is asked for."""
import torch
import torch.nn.functional as F

from ..layers import BasicBlock, Flatten
from ..model import Sequential
from ..ops import OPS
from .walk import Walker, join, refuse

#: torch module type name -> ``rule(importer, module, path, where) -> manualbp module``: the
#: import rules of the containers, here, and of every op's module (``op.imports``, beside the
#: op's code); :class:`manualbp.verify.torch_import.Importer` runs them (``path`` is the torch
#: module's path, ``where`` the manualbp module's)
IMPORTS = {}


def imports(*type_names):
    """Decorator: the function is the import rule for torch modules of the named types."""
    def decorate(rule):
        for name in type_names:
            IMPORTS[name] = rule
        return rule
    return decorate


def import_rules():
    """Every import rule: the containers' and every op's (an op made after this module was
    imported, in a user's file, included)."""
    return {**{name: rule for op in OPS for name, rule in op.importers.items()}, **IMPORTS}


# --- containers: walked as graphs (manualbp.verify.walk.graph) --------------------------------
@imports("Identity")
def import_identity(imp, m, path, where):
    return Sequential(imp.bk, [])


@imports("Sequential")
def import_sequential(imp, m, path, where):
    return Sequential(imp.bk, [(name, imp.layer(child, join(path, name), join(where, name)))
                               for name, child in m.named_children() if type(child).__name__ != "Identity"])


@imports("BasicBlock")
def import_basic_block(imp, m, path, where):
    """torchvision's ``BasicBlock``: conv1 (3x3, stride s), bn1, relu, conv2 (3x3), bn2, and a
    ``downsample`` of a 1x1 convolution with stride s and batch norm, or none."""
    conv1, conv2, down = m.conv1, m.conv2, m.downsample
    shaped = (tuple(conv1.kernel_size) == tuple(conv2.kernel_size) == (3, 3) and conv1.bias is None
              and conv2.bias is None and tuple(conv1.padding) == tuple(conv2.padding) == (1, 1)
              and tuple(conv2.stride) == (1, 1) and conv1.stride[0] == conv1.stride[1])
    if down is not None:
        shaped = shaped and (len(down) == 2 and tuple(down[0].kernel_size) == (1, 1) and down[0].bias is None
                             and tuple(down[0].stride) == tuple(conv1.stride))
    if not shaped or type(m.relu).__name__ != "ReLU":
        refuse(path, m, "expected torchvision's shape: 3x3 convolutions without bias (padding 1, the first "
                        "with the block's stride), ReLU, and a downsample of a 1x1 convolution and batch norm")
    block = BasicBlock(imp.bk, conv1.in_channels, conv1.out_channels, conv1.stride[0])
    if (down is None) != ("shortcut" not in block.children):
        refuse(path, m, f"a block from {conv1.in_channels} to {conv1.out_channels} channels with stride "
                        f"{conv1.stride[0]} needs a downsample exactly when the shape changes")
    parts = {"conv1": (conv1, "conv1"), "bn1": (m.bn1, "bn1"), "conv2": (conv2, "conv2"), "bn2": (m.bn2, "bn2")}
    if down is not None:
        parts.update({"shortcut.conv": (down[0], "downsample.0"), "shortcut.bn": (down[1], "downsample.1")})
    for name, (module, torch_name) in parts.items():
        imp.fill(block, where, name, module, join(path, torch_name))
    return block


@imports("ResNet")
def import_resnet(imp, m, path, where):
    """torchvision's ``ResNet``: its children in order, with the ``flatten`` its forward applies
    between ``avgpool`` and ``fc``."""
    layers = []
    for name, child in m.named_children():
        if name == "fc":
            layers.append(("flatten", Flatten(imp.bk)))
        layers.append((name, imp.layer(child, join(path, name), join(where, name))))
    return Sequential(imp.bk, layers)


def version():
    return f"torch {torch.__version__}"


def reference(model, x, y, arrays, trainable, eps):
    """Forward and backward in PyTorch on copies of ``arrays``: host arrays by full name
    (parameters and buffers); ``trainable``: the parameter names, ``eps``: ``{noise layer path:
    host draw}``.
    Returns host arrays ``{"logits", "loss", "input", "grads": {name: dL/dparam}}``."""
    tensors = {name: torch.from_numpy(a.copy()).requires_grad_(name in trainable)
               for name, a in arrays.items()}
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    walker = Walker("torch", tensors, {path: torch.from_numpy(e.copy()) for path, e in eps.items()})
    logits = walker.run(model, xt)
    loss = F.cross_entropy(logits, torch.from_numpy(y.astype("int64")))
    leaves = [tensors[name] for name in trainable] + [xt]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads)]
    return {"logits": logits.detach().numpy(), "loss": loss.detach().numpy(),
            "input": grads[-1].numpy(),
            "grads": {name: g.numpy() for name, g in zip(trainable, grads[:-1])}}
