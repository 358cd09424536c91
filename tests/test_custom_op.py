"""The worked example of docs/extending.md, ``examples/custom_op.py``, runs and passes: an op of
the user's own (Softplus, which manualbp does not have) with its reference pair, its PyTorch and
JAX rules, a fast NumPy kernel, the module that runs it, its gradient checks, its verification
against both frameworks, and its import rule (a PyTorch model with ``torch.nn.Softplus``
compared by ``compare_torch``)."""
import subprocess
import sys

import manualbp.ops
from conftest import ROOT, checkout_env

SCRIPT = ROOT / "examples" / "custom_op.py"


def test_the_package_has_no_softplus():
    """The example defines the op in its own file: nothing of it comes from the package."""
    assert not hasattr(manualbp.ops, "softplus")
    assert "softplus" not in {op.name for op in manualbp.ops.OPS}


def test_custom_op_example_passes_every_check(torch, jax):
    run = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=checkout_env(),
                         cwd=ROOT, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "fc1.noise.sigma" in run.stdout
    assert run.stdout.count("PASS: all 8 arrays agree") == 4, output      # torch and jax, both kernel settings
    assert "PASS: all 7 arrays agree" in run.stdout, output                # the imported torch.nn.Softplus model
    assert "FAIL" not in run.stdout, output
    assert not hasattr(manualbp.ops, "softplus")
