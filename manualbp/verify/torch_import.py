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
from .compare import TOLERANCES, Report, compare, spread_of
from .compare import perturbed as perturb
from .trace import Importer, TracedRun, export, import_module, inexact_calls

__all__ = ["compare_torch", "from_torch"]

#: how many perturbed runs measure the round-off of a float64 comparison
ROUNDOFF_SEEDS = 3


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
    named as in ``module``); a tensor beyond its tolerance is judged against what round-off
    alone does to it, and against PyTorch computed exactly where PyTorch is not."""
    twin = copy.deepcopy(module).to(getattr(torch, dtype))
    bk = get_backend("numpy", dtype, 0, kernels)
    x = torch.as_tensor(x).to(getattr(torch, dtype)).detach()
    yt = torch.as_tensor(y, dtype=torch.int64)
    ep = export(twin, x)
    leaves = {name: p.detach().clone().requires_grad_(True) for name, p in twin.named_parameters()}
    xt = x.clone().requires_grad_(True)
    run = TracedRun(ep, twin, xt, leaves)
    model = imported(ep, twin, run, bk)
    used = model.named_buffers()                     # the running statistics the pass reads (and updates)
    statistics = [name for name in run.buffers if name.rsplit(".", 1)[-1] in ("running_mean", "running_var")
                  and name in used]
    theirs = differentiate(run, leaves, xt, yt, statistics)
    before = {name: bk.to_host(a).copy() for name, a in model.state_dict().items()}
    ours = hand_written(model, x.numpy(), yt.numpy(), statistics)

    default_rtol, default_atol = TOLERANCES[dtype]
    rtol, atol = default_rtol if rtol is None else rtol, default_atol if atol is None else atol
    report = Report(f"torch {torch.__version__}", dtype, rtol, atol,
                    title=f"{type(module).__name__}: manualbp ({kernels} kernels) vs torch {torch.__version__} "
                          f"autograd ({dtype}, {'training' if module.training else 'evaluation'} mode, "
                          f"batch {len(x)}, rtol {rtol:g}, atol {atol:g})")
    order = ["output", "loss", *leaves, "input", *statistics]
    report.rows = [compare(name, ours[name], theirs[name], rtol, atol) for name in order]
    if not report.passed:
        spread = roundoff(ep, twin, run, leaves, x, yt, statistics, theirs, model, before, ours)
        inexact = inexact_calls()
        report.inexact = {str(n.target): inexact[str(n.target)][0] for n in ep.graph.nodes if str(n.target) in inexact}
        exact = None
        if report.inexact:               # PyTorch's own error: the program with exact rules in place
            copies = {name: p.detach().clone().requires_grad_(True) for name, p in leaves.items()}
            xe = x.clone().requires_grad_(True)
            exact = differentiate(TracedRun(ep, twin, xe, copies, like=run, exact=True), copies, xe, yt, statistics)
        report.rows = [compare(name, ours[name], theirs[name], rtol, atol, spread[name], exact and exact[name])
                       for name in order]
    return report


def imported(ep, twin, run, bk):
    """The manualbp graph of the program ``ep`` of ``twin`` on ``bk``, its dropout layers holding
    the masks the PyTorch ``run`` drew."""
    importer = Importer(bk)
    model = importer.import_program(ep, twin, run, tuple(run.input_shape))
    layers = dict(model.modules())
    for name, node in importer.origin.items():
        if isinstance(layers[name], Dropout) and node in run.masks:
            layers[name].mask, layers[name].hold_mask = bk.asarray(run.masks[node].numpy()), True
    return model


def hand_written(model, x, y, statistics):
    """manualbp's side of a comparison on host ``x`` and labels ``y``: output, loss, ``dL/dx``,
    every parameter gradient and the running ``statistics`` after the pass (host arrays)."""
    bk = model.bk
    loss = SoftmaxCrossEntropy(bk)
    logits = model.forward(bk.asarray(x))
    value = loss.forward(logits, bk.asarray(y, dtype="int64"))
    arrays = {"output": logits, "loss": value, "input": model.backward(loss.backward()), **model.named_gradients()}
    arrays.update({name: b for name, b in model.named_buffers().items() if name in statistics})
    return {name: bk.to_host(a).copy() for name, a in arrays.items()}


def roundoff(ep, twin, run, leaves, x, y, statistics, theirs, model, before, ours):
    """``{name: what round-off alone moves the tensor by}``, the largest over both sides -- a sum
    one side computes as exactly 0 may be round-off in the other. In float32, each side's own
    rounding: its distance from its float64 result (that float64 results agree is what the
    float64 comparison checks; a float32 kernel against its reference, tests/test_kernels.py).
    In float64, each side run again on inputs and weights moved by a few units in the last place
    (:func:`roundoff_run`), over :data:`ROUNDOFF_SEEDS` perturbations (one can move a chaotic
    tensor little by chance)."""
    spread = dict.fromkeys(theirs, 0.0)
    for seed in range(1 if x.dtype == torch.float32 else ROUNDOFF_SEEDS):
        again, moved, x_moved = roundoff_run(ep, twin, run, leaves, x, y, statistics, seed)
        if x.dtype == torch.float32:
            wide = copy.deepcopy(twin).double()
            model = imported(ep, wide, run, get_backend("numpy", "float64", 0, model.bk.kernels))
        else:
            model.load_state_dict({**before, **{name: p.detach().numpy() for name, p in moved.items()}})
        ours_again = hand_written(model, x_moved.detach().numpy(), y.numpy(), statistics)
        spread = {name: max(value, spread_of(again[name], theirs[name]), spread_of(ours_again[name], ours[name]))
                  for name, value in spread.items()}
    return spread


def roundoff_run(ep, twin, run, leaves, x, y, statistics, seed=0):
    """``(arrays, weights, input)``: the PyTorch side again, differing from ``run`` by what
    round-off alone does -- in float32 the program computed in float64 (float32's own rounding,
    exactly); in float64 the program on inputs and weights moved by a few units in the last place
    (:func:`perturbed`) -- and the weights and input it ran on."""
    if x.dtype == torch.float32:
        moved = {name: p.detach().double().requires_grad_(True) for name, p in leaves.items()}
        xm, twin = x.double().requires_grad_(True), copy.deepcopy(twin).double()
    else:
        start = seed * (len(leaves) + 1)
        moved = {name: perturbed(p, start + i + 1).requires_grad_(True) for i, (name, p) in enumerate(leaves.items())}
        xm = perturbed(x, start).requires_grad_(True)
    return differentiate(TracedRun(ep, twin, xm, moved, like=run), moved, xm, y, statistics), moved, xm


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
