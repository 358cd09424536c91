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
#: an array beyond its tolerance whose error is at most this many times what round-off alone
#: moves it by (the spread of the reference when every input and weight is moved by a few units in
#: the last place: :func:`perturbed`) is ill-conditioned, not wrong; a wrong gradient is off by
#: far more
ROUNDOFF_MARGIN = 100
#: how many units in the last place :func:`perturbed` moves each entry by, at most
PERTURBATION_ULPS = 4


class FrameworkMissing(ImportError):
    """The reference framework asked for is not installed."""


@dataclass
class Row:
    """One compared quantity: its name, shape, and errors of manualbp against the reference.
    ``reason``: why an array beyond its tolerance passed -- ``"round-off"`` (ill-conditioned:
    its error is within :data:`ROUNDOFF_MARGIN` times ``spread``) or ``"reference"`` (it agrees
    to ``rtol`` with the reference computed exactly, ``exact_rel``: the difference is the
    reference's own error) -- else ``""``."""

    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    passed: bool
    near_zero: bool = False      # the reference is zero up to round-off: judged by max_abs
    spread: float = None         # max|reference - reference on perturbed inputs| (None: not measured)
    exact_rel: float = None      # the relative error against the reference computed exactly
    reason: str = ""


@dataclass
class Report:
    """The outcome of :func:`verify_model`: one :class:`Row` per compared array."""

    against: str
    dtype: str
    rtol: float
    atol: float
    rows: list = field(default_factory=list)
    title: str = ""
    inexact: dict = field(default_factory=dict)  # the reference's inexact ops the model calls: ATen name -> why

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
            if row.reason == "round-off":
                verdict = f"pass: within round-off (ill-conditioned: round-off alone moves it by {row.spread:.1e})"
            elif row.reason == "reference":
                verdict = f"pass: {row.exact_rel:.1e} from {self.against} computed exactly"
            elif not row.passed and row.spread is not None:
                verdict += f" (round-off alone moves it by {row.spread:.1e})"
            lines.append(f"{row.name:<{width}}  {str(row.shape):<18} {row.max_abs:11.3e}  {rel}  {verdict}")
        conditioned = [row.name for row in self.rows if row.reason == "round-off"]
        inexact = [row.name for row in self.rows if row.reason == "reference"]
        lines.append((f"PASS: all {len(self.rows)} arrays agree" if self.passed else f"FAIL: {', '.join(self.failures)}")
                     + (f"; within round-off of ill-conditioned arrays: {', '.join(conditioned)}" if conditioned else "")
                     + (f"; {len(inexact)} arrays agree with {self.against} up to its own error in "
                        + "; ".join(f"{name} ({why})" for name, why in self.inexact.items()) if inexact else ""))
        return "\n".join(lines)

    def to_dict(self):
        return {"title": self.title, "against": self.against, "dtype": self.dtype, "rtol": self.rtol, "atol": self.atol,
                "passed": self.passed, "failures": self.failures,
                "inexact": self.inexact, "rows": [dict(vars(row), shape=list(row.shape)) for row in self.rows]}


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


def compare(name, ours, theirs, rtol, atol, spread=None, exact=None):
    """A :class:`Row`: ``max|a - b|`` and the relative error of
    :func:`manualbp.gradcheck.relative_error` (scaled by the largest entry, its floor only a guard
    against dividing by zero); a reference ``b`` that is zero up to round-off (``max|b| <= atol``)
    is judged by the absolute error alone. Beyond that, ``spread`` (how far round-off alone moves
    the array) passes an ill-conditioned array, and ``exact`` (the reference computed with exact
    rules in place of its inexact ops) one whose difference is the reference's own error."""
    a, b = ours.astype("float64"), theirs.astype("float64")          # host arrays
    if a.shape != b.shape:
        return Row(name, a.shape, float("inf"), float("inf"), False)
    diff = float(abs(a - b).max()) if a.size else 0.0
    rel = relative_error(a, b, floor=1e-30)
    near_zero = bool(b.size) and float(abs(b).max()) <= atol
    row = Row(name, a.shape, diff, rel, diff <= atol if near_zero else rel <= rtol, near_zero, spread)
    if exact is not None:
        row.exact_rel = relative_error(a, exact.astype("float64"), floor=1e-30)
    if not row.passed and row.spread is not None and diff <= ROUNDOFF_MARGIN * row.spread:
        row.passed, row.reason = True, "round-off"
    elif not row.passed and row.exact_rel is not None and row.exact_rel <= rtol:
        row.passed, row.reason = True, "reference"
    return row


def spread_of(again, first):
    """``max|again - first|`` of two host arrays (0 for empty ones): how far a second run moved
    the result of the first."""
    return float(abs(again.astype("float64") - first.astype("float64")).max()) if first.size else 0.0


def perturbed(array, seed=0, ulps=PERTURBATION_ULPS):
    """A copy of the host array with every entry moved by up to ``ulps`` units of its last place,
    at random (an integer array: unchanged): run on such copies, a computation differs from
    itself by what round-off alone does to each result."""
    import numpy as np
    if not np.issubdtype(array.dtype, np.floating):
        return array.copy()
    noise = np.random.default_rng(seed).uniform(-1, 1, array.shape)
    return (array * (1 + ulps * np.finfo(array.dtype).eps * noise)).astype(array.dtype)


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
    def reference(x, arrays):
        ref = framework.reference(model, x, bk.to_host(y), arrays, trainable, eps)
        return {"logits": ref["logits"], "loss": ref["loss"], **ref["grads"], "input": ref["input"]}

    theirs = reference(bk.to_host(x), arrays)
    report = Report(framework.version(), bk.dtype.name, rtol, atol, title=title)
    report.rows = [compare(name, ours[name], theirs[name], rtol, atol) for name in ours]
    if not report.passed:                  # what round-off alone does (float32: float64's result)
        moved = ((lambda a, seed: a.astype("float64") if a.dtype.name == "float32" else a.copy())
                 if bk.dtype.name == "float32" else perturbed)
        again = reference(moved(bk.to_host(x), 0), {name: moved(a, i + 1) for i, (name, a) in enumerate(arrays.items())})
        report.rows = [compare(name, ours[name], theirs[name], rtol, atol, spread_of(again[name], theirs[name]))
                       for name in ours]
    return report
