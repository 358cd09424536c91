"""Any PyTorch model as a manualbp model, and every gradient of the two compared.

:func:`from_torch` traces a ``torch.nn.Module`` (:mod:`manualbp.verify.trace`) into a manualbp
graph of ops with its weights and buffers; :func:`compare_torch` runs the traced program in
PyTorch (autograd) and that graph (the hand-written backward) on the same input, labels and
dropout masks and reports, per tensor, the relative and the absolute error. Imported only when
it is used (it imports torch).
"""
import copy

import torch

from ..backend import get_backend
from ..layers import Dropout, SoftmaxCrossEntropy
from .compare import TOLERANCES, Report, compare
from .compare import perturbed as perturb
from .trace import Importer, TracedRun, export, import_module, inexact_calls

__all__ = ["compare_torch", "from_torch"]


def from_torch(module, input_shape, backend=None, batch=2):
    """A manualbp model computing what the ``torch.nn.Module`` ``module`` computes on inputs of
    shape ``(N, *input_shape)`` (traced at ``N = batch``; a reshape whose first axis is the
    batch follows any ``N``), in the module's mode, on ``backend`` (default: NumPy, float64), with
    its weights and buffers (copies). A call without a trace rule stops the import with one line
    naming the node, its ATen op, the module it is in and the supported ops."""
    bk = backend or get_backend("numpy", "float64", 0)
    dtype = next(iter(module.state_dict().values()), torch.empty(0, dtype=torch.float64)).dtype
    x = torch.rand((batch, *input_shape), generator=torch.Generator().manual_seed(0), dtype=dtype)
    return import_module(module, x, bk)


def compare_torch(module, x, y, dtype="float64", rtol=None, atol=None, kernels="fast"):
    """Trace ``module`` (a copy in ``dtype``; the module itself is left as it is) on ``x``, run
    the traced program in PyTorch and its manualbp import on ``x`` and the labels ``y``, in the
    mode the module is in, and compare the output, the mean cross-entropy loss, every parameter
    gradient, ``dL/dx`` and the batch norm running statistics after the pass. Dropout in training
    mode uses the masks the PyTorch run drew. Returns a :class:`~manualbp.verify.Report` (rows
    named as in ``module``)."""
    twin = copy.deepcopy(module).to(getattr(torch, dtype))
    bk = get_backend("numpy", dtype, 0, kernels)
    x = torch.as_tensor(x).to(getattr(torch, dtype)).detach()
    yt = torch.as_tensor(y, dtype=torch.int64)
    ep = export(twin, x)
    leaves = {name: p.detach().clone().requires_grad_(True) for name, p in twin.named_parameters()}
    xt = x.clone().requires_grad_(True)
    run = TracedRun(ep, twin, xt, leaves)
    importer = Importer(bk)
    model = importer.import_program(ep, twin, run, tuple(x.shape[1:]))
    statistics = [name for name in run.buffers if name.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    theirs = differentiate(run, leaves, xt, yt, statistics)

    layers = dict(model.modules())
    for name, node in importer.origin.items():
        if isinstance(layers[name], Dropout) and node in run.masks:
            layers[name].mask, layers[name].hold_mask = bk.asarray(run.masks[node].numpy()), True
    loss_layer = SoftmaxCrossEntropy(bk)
    logits = model.forward(bk.asarray(x.numpy()))
    value = loss_layer.forward(logits, bk.asarray(yt.numpy(), dtype="int64"))
    grad_x = model.backward(loss_layer.backward())
    ours = {"output": logits, "loss": value, "input": grad_x, **model.named_gradients()}
    ours.update({name: b for name, b in model.named_buffers().items() if name in statistics})
    default_rtol, default_atol = TOLERANCES[dtype]
    rtol, atol = default_rtol if rtol is None else rtol, default_atol if atol is None else atol
    report = Report(f"torch {torch.__version__}", dtype, rtol, atol,
                    title=f"{type(module).__name__}: manualbp ({kernels} kernels) vs torch {torch.__version__} "
                          f"autograd ({dtype}, {'training' if module.training else 'evaluation'} mode, "
                          f"batch {len(x)}, rtol {rtol:g}, atol {atol:g})")
    order = ["output", "loss", *leaves, "input", *statistics]
    ours = {name: bk.to_host(ours[name]) for name in order}
    report.rows = [compare(name, ours[name], theirs[name], rtol, atol) for name in order]
    if not report.passed:                # what round-off alone does to each tensor
        again = roundoff_run(ep, twin, run, leaves, x, yt, statistics)
        report.inexact = {str(n.target): inexact_calls()[str(n.target)][0] for n in ep.graph.nodes
                          if str(n.target) in inexact_calls()}
        exact = None
        if report.inexact:               # PyTorch's own error: the program with exact rules in place
            copies = {name: p.detach().clone().requires_grad_(True) for name, p in leaves.items()}
            xe = x.clone().requires_grad_(True)
            exact = differentiate(TracedRun(ep, twin, xe, copies, like=run, exact=True), copies, xe, yt, statistics)
        report.rows = [compare(name, ours[name], theirs[name], rtol, atol, again[name], exact and exact[name])
                       for name in order]
    return report


def roundoff_run(ep, twin, run, leaves, x, y, statistics):
    """The PyTorch side again, differing from ``run`` by what round-off alone does: in float32
    the program computed in float64 (float32's own rounding, exactly); in float64 the program on
    inputs and weights moved by a few units in the last place (:func:`perturbed`)."""
    if x.dtype == torch.float32:
        moved = {name: p.detach().double().requires_grad_(True) for name, p in leaves.items()}
        xm, twin = x.double().requires_grad_(True), copy.deepcopy(twin).double()
    else:
        moved = {name: perturbed(p, seed=i + 1).requires_grad_(True) for i, (name, p) in enumerate(leaves.items())}
        xm = perturbed(x).requires_grad_(True)
    return differentiate(TracedRun(ep, twin, xm, moved, like=run), moved, xm, y, statistics)


def differentiate(run, leaves, x, y, statistics):
    """The PyTorch side of a comparison from a :class:`TracedRun` on ``x`` with the parameters
    ``leaves``: output, loss, ``dL/dx``, every parameter gradient and running statistic (host)."""
    loss = torch.nn.functional.cross_entropy(run.output, y)
    grads = torch.autograd.grad(loss, [*leaves.values(), x], allow_unused=True)
    arrays = {"output": run.output.detach().numpy(), "loss": loss.detach().numpy(), "input": grads[-1].numpy()}
    arrays.update({name: (torch.zeros_like(p) if g is None else g).numpy() for (name, p), g in zip(leaves.items(), grads)})
    arrays.update({name: run.buffers[name].numpy() for name in statistics})
    return arrays


def perturbed(t, seed=0):
    """A copy of the tensor with every entry moved by a few units in the last place
    (:func:`manualbp.verify.compare.perturbed`)."""
    return torch.from_numpy(perturb(t.detach().numpy(), seed))
