"""Run a manualbp model and a reference framework on the same weights and noise draws, and compare
the logits, the loss, every parameter gradient and the input gradient."""
import importlib
from dataclasses import dataclass, field

from ..gradcheck import relative_error
from ..layers import SoftmaxCrossEntropy
from ..model import noise_layers

FRAMEWORKS = {"torch": ("torch", "pip install torch"), "jax": ("jax", "pip install jax")}
# (rtol, atol) by dtype: an array passes when its relative error is at most rtol; an array whose
# reference is zero up to round-off (every entry at most atol, e.g. the gradient of a bias in
# front of batch norm) has no meaningful relative error and is judged by its absolute error.
TOLERANCES = {"float64": (1e-9, 1e-13), "float32": (1e-4, 1e-7)}
#: an array beyond ``rtol`` whose error is at most this many times its expected round-off (the
#: spread of the reference under a perturbation of every input and weight by a few units in the
#: last place) is ill-conditioned, not wrong: a wrong gradient is off by far more
ROUNDOFF_MARGIN = 100


class FrameworkMissing(ImportError):
    """The reference framework asked for is not installed."""


@dataclass
class Row:
    """One compared quantity: its name, shape, and errors of manualbp against the reference."""

    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    passed: bool
    near_zero: bool = False      # the reference is zero up to round-off: judged by max_abs
    roundoff: float = 0.0        # the relative error round-off alone is expected to cause
    rtol: float = 0.0            # the tolerance it was judged by

    @property
    def ill_conditioned(self):
        """Passed only because its error is within its expected round-off."""
        return self.passed and not self.near_zero and self.max_rel > self.rtol


@dataclass
class Report:
    """The outcome of :func:`verify_model`: one :class:`Row` per compared array."""

    against: str
    dtype: str
    rtol: float
    atol: float
    rows: list = field(default_factory=list)
    title: str = ""

    @property
    def passed(self):
        return all(row.passed for row in self.rows)

    @property
    def failures(self):
        """Names of the arrays that differ by more than ``rtol``."""
        return [row.name for row in self.rows if not row.passed]

    def format(self):
        """A plain-text table, then one line naming the verdict (and every failure)."""
        width = max(len(row.name) for row in self.rows)
        lines = [self.title or f"manualbp vs {self.against} ({self.dtype}, rtol {self.rtol:g}, atol {self.atol:g})",
                 f"{'name':<{width}}  {'shape':<18} {'max abs err':>11}  {'max rel err':>11}  result"]
        for row in self.rows:
            rel = f"{'(~0 ref)':>11}" if row.near_zero else f"{row.max_rel:11.3e}"
            verdict = ("pass" if row.passed else "FAIL") + (" by abs err" if row.near_zero else "")
            if row.ill_conditioned:
                verdict = f"pass: within round-off (ill-conditioned: expected {row.roundoff:.1e})"
            elif not row.passed and row.roundoff:
                verdict += f" (round-off alone: {row.roundoff:.1e})"
            lines.append(f"{row.name:<{width}}  {str(row.shape):<18} {row.max_abs:11.3e}  {rel}  {verdict}")
        conditioned = [row.name for row in self.rows if row.ill_conditioned]
        lines.append((f"PASS: all {len(self.rows)} arrays agree" if self.passed else f"FAIL: {', '.join(self.failures)}")
                     + (f"; within round-off of ill-conditioned arrays: {', '.join(conditioned)}" if conditioned else ""))
        return "\n".join(lines)

    def to_dict(self):
        return {"title": self.title, "against": self.against, "dtype": self.dtype, "rtol": self.rtol, "atol": self.atol,
                "passed": self.passed, "failures": self.failures,
                "rows": [dict(vars(row), shape=list(row.shape), ill_conditioned=row.ill_conditioned)
                         for row in self.rows]}


def load_framework(against):
    """The reference module for ``against`` ("torch" or "jax"); a clear error when missing."""
    if against not in FRAMEWORKS:
        raise ValueError(f"unknown reference framework {against!r}: expected one of {', '.join(FRAMEWORKS)}")
    package, install = FRAMEWORKS[against]
    try:
        importlib.import_module(package)
    except ImportError as err:
        raise FrameworkMissing(f"--against {against} needs {package}, which cannot be imported "
                               f"({err}); install it with: {install}") from None
    return importlib.import_module(f".{against}_ref", __package__)


def compare(name, ours, theirs, rtol, atol, roundoff=0.0):
    """A :class:`Row`: ``max|a - b|`` and the relative error of
    :func:`manualbp.gradcheck.relative_error` (scaled by the largest entry, its floor only a guard
    against dividing by zero); a reference ``b`` that is zero up to round-off (``max|b| <= atol``)
    is judged by the absolute error alone. ``roundoff``: the relative error round-off alone is
    expected to cause; within :data:`ROUNDOFF_MARGIN` times it, an error beyond ``rtol`` passes
    as ill-conditioned."""
    a, b = ours.astype("float64"), theirs.astype("float64")          # host arrays
    if a.shape != b.shape:
        return Row(name, a.shape, float("inf"), float("inf"), False, rtol=rtol)
    diff = float(abs(a - b).max()) if a.size else 0.0
    rel = relative_error(a, b, floor=1e-30)
    near_zero = bool(b.size) and float(abs(b).max()) <= atol
    passed = diff <= atol if near_zero else rel <= max(rtol, ROUNDOFF_MARGIN * roundoff)
    return Row(name, a.shape, diff, rel, passed, near_zero, roundoff, rtol)


def verify_model(model, x, y, against="torch", rtol=None, atol=None, title=""):
    """Compare ``model``'s forward and hand-written backward pass with a reference framework.

    The model runs once in its current mode (training mode: noise layers draw ``eps``), and its
    parameters and buffers are restored afterwards (batch norm's running statistics); the
    reference then recomputes the same function from the same parameters, buffers (as they were
    before the pass) and noise draws, converting the model layer by layer
    (:mod:`manualbp.verify.walk`), and differentiates it by autograd. ``x``: a batch in the
    model's input shape; ``y``: integer labels. Loss: mean softmax cross-entropy.

    Returns a :class:`Report` with rows ``logits``, ``loss``, every parameter gradient by name and
    ``input`` (``dL/dx``); ``rtol`` and ``atol`` default to :data:`TOLERANCES` of the backend's
    dtype.
    """
    framework = load_framework(against)
    bk = model.bk
    x, y = bk.asarray(x), bk.asarray(y, dtype="int64")
    default_rtol, default_atol = TOLERANCES[bk.dtype.name]
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    arrays = {name: bk.to_host(a).copy() for name, a in model.state_dict().items()}
    trainable = list(model.named_parameters())

    loss = SoftmaxCrossEntropy(bk)
    logits = model.forward(x)
    value = loss.forward(logits, y)
    grad_x = model.backward(loss.backward())
    ours = {"logits": logits, "loss": value, **model.named_gradients(), "input": grad_x}
    ours = {name: bk.to_host(a) for name, a in ours.items()}
    eps = {path: bk.to_host(layer.eps) for path, layer in noise_layers(model).items() if layer.draws}

    model.load_state_dict(arrays)          # undo the pass's side effects (running statistics)
    ref = framework.reference(model, bk.to_host(x), bk.to_host(y), arrays, trainable, eps)
    theirs = {"logits": ref["logits"], "loss": ref["loss"], **ref["grads"], "input": ref["input"]}
    report = Report(framework.version(), bk.dtype.name, rtol, atol, title=title)
    report.rows = [compare(name, ours[name], theirs[name], rtol, atol) for name in ours]
    return report
