"""A layer of your own, written the way every layer of manualbp is: an op, a module that runs it.

    python examples/custom_op.py

Softplus, ``phi(v) = log(1 + e^v)`` with ``phi'(v) = sigmoid(v)``, which manualbp does not have:

1. the op -- a reference forward / backward pair with an explicit cache;
2. its rules -- the same forward in PyTorch and in JAX, which their autograd differentiates;
3. a fast kernel for NumPy, of the same signature, proven equal to the reference;
4. the module that runs the op, used in a small model with learned noise (Eq. 1);
5. every gradient checked by finite differences (float64), on both kernel settings;
6. the model verified against PyTorch and JAX;
7. a trace rule: torch's ``softplus`` called in a PyTorch model becomes a node running this op,
   so that ``compare_torch`` checks that model's every gradient against the hand-written backward.

Prints each check and exits 0 only if all of them pass (docs/extending.md walks through it).
"""
import sys

from manualbp import get_backend
from manualbp.gradcheck import check_gradients, directional_check
from manualbp.layers import Linear, Module, SoftmaxCrossEntropy
from manualbp.model import Sequential
from manualbp.ops import Op
from manualbp.verify import verify_model
from manualbp.zoo import noise_for


# --- 1. the op: a reference pair with an explicit cache -------------------------------------
def softplus_forward(xp, v):
    """``phi(v) = log(1 + e^v)``; the cache is what backward needs, ``phi'(v) = sigmoid(v)``."""
    slope = 0.5 * (1 + xp.tanh(0.5 * v))          # sigmoid(v), without overflow
    return xp.logaddexp(0, v), slope              # x = phi(v), Eq. (1)


def softplus_backward(xp, delta, slope, need):
    """One gradient per input: ``dL/dv = phi'(v) * delta``, or ``None`` when not needed."""
    return (delta * slope if need[0] else None,)  # phi'(v) * delta, Eq. (2)


softplus = Op("softplus", ("v",), softplus_forward, softplus_backward)


# --- 2. its rules: the forward pass in PyTorch and JAX ----------------------------------------
@softplus.rule("torch")
def softplus_torch(v):
    import torch.nn.functional as F
    return F.softplus(v)


@softplus.rule("jax")
def softplus_jax(v):
    import jax
    return jax.nn.softplus(v)


# --- 3. a fast kernel for NumPy: the same numbers, fewer temporary arrays ---------------------
def softplus_forward_fast(xp, v):
    """The reference's output and cache, each computed in one array in ``v``'s layout."""
    slope = xp.multiply(v, 0.5, out=xp.empty_like(v))
    xp.tanh(slope, out=slope)
    slope += 1
    slope *= 0.5                                  # sigmoid(v), the reference's operations
    return xp.logaddexp(0, v, out=xp.empty_like(v)), slope


softplus.kernel("numpy", softplus_forward_fast)   # backward: the reference's


def fast_kernel_equals_reference():
    """The fast pair against the reference pair on the same input (a transposed one too): the
    same output, cache and ``dL/dv``, bit for bit."""
    bk = get_backend("numpy", "float32", seed=1)
    fast_forward, fast_backward = softplus.kernels["numpy"]
    v, delta = bk.normal((64, 3, 5, 5)) * 30, bk.normal((64, 3, 5, 5))
    for v in (v, v.transpose(1, 2, 3, 0).copy().transpose(3, 0, 1, 2)):
        (y, slope), (y_fast, slope_fast) = softplus_forward(bk.xp, v), fast_forward(bk.xp, v)
        dv = softplus_backward(bk.xp, delta, slope, (True,))[0]
        dv_fast = fast_backward(bk.xp, delta, slope_fast, (True,))[0]
        if not ((y == y_fast).all() and (slope == slope_fast).all() and (dv == dv_fast).all()):
            return False
    return True


# --- 4. the module that runs it, in a model ----------------------------------------------------
class Softplus(Module):
    """``phi(v) = log(1 + e^v)``, element-wise. Shapes: any."""

    op = softplus


# --- 7. a trace rule: torch's softplus in a traced PyTorch model -> this op -----------------------
@softplus.traces("aten.softplus.default")
def softplus_from_aten(call, v, beta=1, threshold=20):
    if beta != 1:                                 # log(1 + e^(beta v)) / beta: not this op
        call.refuse(f"beta {beta}; expected 1")
    return [v], {}


def torch_model_agrees():
    """A PyTorch model with a ``torch.nn.Softplus``, imported and every gradient compared."""
    import torch
    from manualbp.verify import compare_torch
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Softplus(), torch.nn.Linear(8, 3))
    report = compare_torch(net, torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1]))
    print()
    print(report.format())
    return report.passed


def small_model(bk):
    """Linear with learned noise (an MLPN layer), Softplus, Linear."""
    return Sequential(bk, [
        ("fc1", Linear(bk, 4, 8, noise=noise_for(bk, (8,), "learned"))),
        ("act1", Softplus(bk)),
        ("fc2", Linear(bk, 8, 3)),
    ], input_shape=(4,))


def main():
    results = {"fast kernel == reference, bit for bit": fast_kernel_equals_reference()}
    print(f"numpy fast table: softplus -> {get_backend('numpy').table()['softplus']}")
    for kernels in ("reference", "fast"):
        bk = get_backend("numpy", "float64", seed=0, kernels=kernels)   # float64 for the checks
        model = small_model(bk)
        x = bk.normal((5, 4))
        y = bk.asarray([0, 1, 2, 0, 1], dtype="int64")

        # --- 5. gradients against centred finite differences ---------------------------------
        loss = SoftmaxCrossEntropy(bk)
        errors = check_gradients(model, x, loss, y)
        print(f"\n[{kernels}] finite differences, relative error per array:")
        for name, error in errors.items():
            print(f"  {name:<16} {error:.2e}")
        direction = directional_check(model, x, loss, y)
        print(f"  {'(direction)':<16} {direction:.2e}")
        results[f"[{kernels}] gradients"] = max(errors.values()) < 1e-7 and direction < 1e-7

        # --- 6. the model against PyTorch and JAX ---------------------------------------------
        for against in ("torch", "jax"):
            report = verify_model(model, x, y, against=against)
            print()
            print(report.format())
            results[f"[{kernels}] {against}"] = report.passed

    results["torch.nn.Softplus imported, every gradient"] = torch_model_agrees()
    print()
    for what, ok in results.items():
        print(f"{'pass' if ok else 'FAIL'}  {what}")
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
