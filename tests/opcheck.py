"""One check for one op on given inputs: the reference backward against float64 finite
differences for every differentiable input, the fast pair of every backend against the
reference, and the op's PyTorch and JAX rules (forward and autograd) against the reference.

``check_op(op, inputs, settings)``: ``inputs`` are host float64 arrays (or ``None`` for an absent
optional input, or an integer array, which is not differentiated) in the order of the op's
inputs; ``settings`` its keyword arguments.
"""
import numpy as np

from manualbp import get_backend
from manualbp.gradcheck import numerical_gradient, relative_error

FD_RTOL = 1e-6          # centred differences, h = 1e-5, float64
EXACT_RTOL = 1e-11      # two exact computations of one function in float64


def differentiable(a):
    return a is not None and np.issubdtype(np.asarray(a).dtype, np.floating)


def run(bk, pair, inputs, settings, projection, wanted=None):
    """``(output, gradients)`` of ``sum(output * projection)`` by ``pair`` on ``bk``."""
    forward, backward = pair
    xs = [None if a is None else bk.asarray(a, dtype=a.dtype if not differentiable(a) else None)
          for a in inputs]
    out, cache = forward(bk.xp, *xs, **settings)
    wanted = wanted or [differentiable(a) for a in inputs]
    need = tuple(True if w else None for w in wanted)
    grads = backward(bk.xp, bk.asarray(projection), cache, need)
    return bk.to_host(out), [None if g is None else bk.to_host(g) for g in grads]


def torch_grads(op, inputs, settings, projection):
    import torch
    ts = [None if a is None else torch.tensor(a, requires_grad=differentiable(a)) for a in inputs]
    out = op.rules["torch"](*ts, **settings)
    leaves = [t for t in ts if t is not None and t.requires_grad]
    grads = torch.autograd.grad((out * torch.tensor(projection)).sum(), leaves, allow_unused=True)
    it = iter(grads)
    return out.detach().numpy(), [next(it) if t is not None and t.requires_grad else None for t in ts]


def jax_grads(op, inputs, settings, projection):
    import jax
    import jax.numpy as jnp
    jax.config.update("jax_enable_x64", True)
    positions = [i for i, a in enumerate(inputs) if differentiable(a)]

    def f(*diff):
        xs = [None if a is None else jnp.asarray(a) for a in inputs]
        for i, d in zip(positions, diff):
            xs[i] = d
        return (op.rules["jax"](*xs, **settings) * projection).sum()

    out = op.rules["jax"](*[None if a is None else jnp.asarray(a) for a in inputs], **settings)
    grads = jax.grad(f, argnums=tuple(range(len(positions))))(*[jnp.asarray(inputs[i]) for i in positions])
    result = [None] * len(inputs)
    for i, g in zip(positions, grads):
        result[i] = g
    return np.asarray(out), result


def check_op(op, inputs, settings=None, seed=0, frameworks=("torch", "jax"), fd=True):
    """Run every check; raise AssertionError naming the first that fails."""
    settings = settings or {}
    inputs = [None if a is None else np.array(a) for a in inputs]
    bk = get_backend("numpy", "float64", 0, "reference")
    ref_out, _ = op.forward(bk.xp, *[a if a is None or not differentiable(a) else a.copy() for a in inputs],
                            **settings)
    projection = np.random.default_rng(seed).standard_normal(np.shape(ref_out))
    out, grads = run(bk, (op.forward, op.backward), inputs, settings, projection)
    if fd:
        for i, a in enumerate(inputs):
            if not differentiable(a):
                continue
            work = [None if b is None else b.copy() for b in inputs]

            def loss():
                return float((op.forward(np, *work, **settings)[0] * projection).sum())
            numeric = numerical_gradient(loss, work[i])
            err = relative_error(grads[i], numeric)
            assert err < FD_RTOL, f"{op.name}: d/d{op.inputs[min(i, len(op.inputs) - 1)]} off finite differences by {err:.2e}"
    for name in ("numpy",):
        if name in op.kernels:
            fast_out, fast_grads = run(get_backend(name, "float64", 0, "fast"), op.kernels[name], inputs, settings,
                                       projection)
            assert relative_error(fast_out, out) < EXACT_RTOL, f"{op.name}: fast forward differs"
            for i, (g, f) in enumerate(zip(grads, fast_grads)):
                if g is not None:
                    assert relative_error(f, g) < EXACT_RTOL, f"{op.name}: fast gradient {i} differs"
    for framework in frameworks:
        if framework not in op.rules:
            raise AssertionError(f"{op.name} has no {framework} rule")
        their_out, their_grads = (torch_grads if framework == "torch" else jax_grads)(op, inputs, settings, projection)
        assert relative_error(np.asarray(their_out), out) < EXACT_RTOL, f"{op.name}: {framework} forward differs"
        for i, (g, t) in enumerate(zip(grads, their_grads)):
            if differentiable(inputs[i]):
                t = np.zeros_like(inputs[i]) if t is None else np.asarray(t)
                err = relative_error(g, t)
                assert err < EXACT_RTOL, f"{op.name}: gradient {i} off {framework} autograd by {err:.2e}"
    return out, grads


def check_rule(aten_name, *args, **kwargs):
    """Import one call of the ATen op ``aten_name`` (e.g. ``"aten.view.default"``) by the trace
    rule that names it and compare what the op computes with what torch's ATen op computes on the
    same arguments (host float64 arrays for the tensors; other arguments as in the call). Returns
    the manualbp output (a list for a call with several outputs)."""
    import torch

    from manualbp.ops import OPS
    from manualbp.verify.trace import Call, Value
    owners = [op for op in OPS if aten_name in op.tracers]
    assert len(owners) == 1, f"{aten_name}: traced by {[op.name for op in owners]}, expected one op"
    op = owners[0]
    bk = get_backend("numpy", "float64", 0, "reference")
    arrays = {}

    def value(a):
        if isinstance(a, np.ndarray):
            v = Value(f"t{len(arrays)}", a.shape, a.dtype.name)
            arrays[v.node] = a
            return v
        if isinstance(a, (list, tuple)):
            return type(a)(value(b) for b in a)
        return a

    result = op.tracers[aten_name](Call(bk, f"test call of {aten_name}"), *[value(a) for a in args],
                                   **{k: value(v) for k, v in kwargs.items()})

    def compute(spec):
        if isinstance(spec, Value):
            return arrays[spec.node]
        runs, (inputs, settings) = (spec[0], spec[1:]) if len(spec) == 3 else (op, spec)
        xs = [None if v is None else bk.asarray(arrays[v.node], dtype=arrays[v.node].dtype) for v in inputs]
        if not isinstance(settings, dict):                 # a module: run it
            return bk.to_host(settings.forward(*xs))
        return bk.to_host(runs.forward(bk.xp, *xs, **settings)[0])

    ours = [compute(s) for s in result] if isinstance(result, list) else compute(result)
    packet = getattr(torch.ops.aten, aten_name.split(".")[1])
    target = getattr(packet, aten_name.split(".")[2])

    def tensor(a):
        if isinstance(a, np.ndarray):
            return torch.tensor(a)
        if isinstance(a, (list, tuple)):
            return type(a)(tensor(b) for b in a)
        return a

    theirs = target(*[tensor(a) for a in args], **{k: tensor(v) for k, v in kwargs.items()})
    if isinstance(ours, list):
        assert len(ours) == len(theirs), f"{aten_name}: {len(ours)} outputs, torch gives {len(theirs)}"
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-12, atol=1e-14, err_msg=aten_name)
    else:
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=aten_name)
    return ours
