"""The course's exercises and their checker.

``check(name, function)`` runs the learner's ``function`` for exercise ``name`` on fixed random
inputs (float64, seeded), compares what it returns with the engine's answer -- the reference ops
of :mod:`manualbp.ops` and the optimiser of :mod:`manualbp.optim` -- and, where the exercise is a
gradient, with centred finite differences of the forward pass it differentiates. It prints one
line and returns whether the function passed::

    pass: linear_backward agrees with the engine and finite differences (max rel err 3.1e-16)
    wrong: linear_backward: db is not summed over the batch: expected shape (4,), got (5, 4)
    todo: linear_backward is not written yet
    wrong: linear_backward raised TypeError: unsupported operand type(s) ...

Each exercise below is one small spec: its inputs, the engine's answer, the names of what the
function returns, the forward pass for finite differences, and the known wrong answers it names
in words. One diagnosis (:func:`diagnose`) serves them all: wrong count or shape, transposed, not
summed over the batch, wrong sign, a factor N off, a known mistake, else the largest difference.
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from ..gradcheck import numerical_gradient, relative_error
from ..ops.im2col import col2im as engine_col2im, conv_geometry, im2col, windows
from ..ops.linear import linear_backward as engine_linear_backward, linear_forward
from ..ops.noise import noise_backward as engine_noise_backward, noise_forward
from ..ops.norm import batch_norm_backward, batch_norm_forward
from ..ops.shape import cat_backward, cat_forward

__all__ = ["EXERCISES", "Exercise", "check"]

#: agreement with the engine: relative error (scaled by the largest entry) below this
ENGINE_TOLERANCE = 1e-9
#: agreement with centred differences (h = 1e-5): their own error is about 1e-10
FINITE_DIFFERENCE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Exercise:
    """One exercise: what the learner writes (``signature``, ``task``, ``chapter``) and how it is
    checked. ``inputs()`` gives the seeded arguments in the signature's order; ``engine(**inputs)``
    and ``finite_differences(**inputs)`` (``None`` when the exercise is not a gradient) give the
    expected outputs, named ``outputs``; ``shape_of[out]`` says where an output's shape comes
    from; ``mistakes`` are ``(output, wrong(**inputs), words)``: a known wrong answer of that
    output and its diagnosis (output ``None``: ``wrong`` gives all the outputs, and all must
    match); ``batch``: the batch size N (for "N times too large")."""
    name: str
    signature: str
    task: str
    chapter: int
    inputs: Callable[[], dict] = field(repr=False)
    engine: Callable[..., tuple] = field(repr=False)
    outputs: tuple = field(repr=False)
    shape_of: dict = field(repr=False)
    finite_differences: Optional[Callable[..., tuple]] = field(default=None, repr=False)
    mistakes: tuple = field(default=(), repr=False)
    batch: Optional[int] = field(default=None, repr=False)


def centred(f, array):
    """``d f() / d array`` by centred differences (``array`` perturbed in place, restored)."""
    return numerical_gradient(f, array)


# --- 1. linear_backward (chapter 1, Eq. 2 for a dense layer) --------------------------------------

def linear_inputs():
    rng = np.random.default_rng(1)
    return {"x": rng.standard_normal((5, 3)), "weight": rng.standard_normal((4, 3)),
            "delta": rng.standard_normal((5, 4))}


def linear_engine(x, weight, delta):
    return engine_linear_backward(np, delta, (x, weight), (True, True, True))


def linear_numeric(x, weight, delta):
    x, weight, bias = x.copy(), weight.copy(), np.zeros(weight.shape[0])
    loss = lambda: float((linear_forward(np, x, weight, bias)[0] * delta).sum())   # L = sum(v * delta)
    return centred(loss, x), centred(loss, weight), centred(loss, bias)


# --- 2. noise_backward (chapter 1, Eq. 3) ----------------------------------------------------------

def noise_inputs():
    rng = np.random.default_rng(2)
    return {"delta": rng.standard_normal((5, 3)), "eps": rng.standard_normal((5, 3))}


def noise_engine(delta, eps):
    sigma = np.zeros(delta.shape[1:])
    return (engine_noise_backward(np, delta, (sigma, eps, False), (None, True, None))[1],)


def noise_numeric(delta, eps):
    v, sigma = np.zeros_like(delta), np.full(delta.shape[1:], 0.5)
    loss = lambda: float((noise_forward(np, v, sigma, None, eps)[0] * delta).sum())
    return (centred(loss, sigma),)


# --- 3. sigma_update (chapter 1, Eq. 7) ------------------------------------------------------------

def sigma_inputs():
    rng = np.random.default_rng(3)
    sigma = np.array([0.5, 0.004, 0.02, 0.001, 0.3, 0.0])     # small levels: a step can cross 0
    grad = np.array([0.3, 2.0, -1.0, 0.8, -0.2, -0.5])
    return {"sigma": sigma, "grad": grad, "m": 0.1 * rng.standard_normal(6),
            "v": 0.01 * rng.random(6) + 0.001, "t": 3, "lr": 0.01, "beta1": 0.9, "beta2": 0.999,
            "adam_eps": 1e-8}


def sigma_engine(sigma, grad, m, v, t, lr, beta1, beta2, adam_eps):
    """Step ``t`` of the engine's noise-level optimiser (Adam with ``keep_positive``, Eq. 7) on a
    one-parameter model whose moments are ``m`` and ``v``."""
    from ..backend import get_backend
    from ..layers.base import Module
    from ..optim import noise_level_optimizer

    model = Module(get_backend("numpy", "float64", 0, "reference"))
    model.add_param("sigma", sigma.copy())
    model.grads["sigma"][...] = grad
    opt = noise_level_optimizer(model, lr=lr, betas=(beta1, beta2), floor=adam_eps)
    opt.state["m"]["sigma"][...], opt.state["v"]["sigma"][...] = m, v
    opt.t = t - 1                                             # step() counts this step as t
    opt.step()
    return model.params["sigma"], opt.state["m"]["sigma"], opt.state["v"]["sigma"]


def sigma_step(sigma, grad, m, v, t, lr, beta1, beta2, adam_eps, bias_correction=True):
    """``sigma - lr * h_hat / (sqrt(v_hat) + adam_eps)`` before the absolute value (mistakes)."""
    h, s = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad * grad
    if bias_correction:
        h, s = h / (1 - beta1 ** t), s / (1 - beta2 ** t)
    return sigma - lr * h / (np.sqrt(s) + adam_eps)


# --- 4. col2im (chapter 2) -------------------------------------------------------------------------

def col2im_inputs():
    rng = np.random.default_rng(4)
    x_shape, kernel_size, stride, padding = (2, 2, 5, 5), 3, 2, 1     # 3x3 windows overlap at stride 2
    return {"cols": rng.standard_normal((2, 2, 3, 3, 3, 3)), "x_shape": x_shape,
            "kernel_size": kernel_size, "stride": stride, "padding": padding}


def col2im_engine(cols, x_shape, kernel_size, stride, padding):
    return (engine_col2im(cols, x_shape, kernel_size, stride, padding, np),)


def col2im_numeric(cols, x_shape, kernel_size, stride, padding):
    x = np.zeros(x_shape)
    loss = lambda: float((im2col(x, kernel_size, stride, padding, np) * cols).sum())   # <im2col(x), cols>
    return (centred(loss, x),)


def col2im_wrong(cols, x_shape, kernel_size, stride, padding, overwrite=False, crop=True):
    """col2im with one mistake: ``overwrite`` overlapping patches, or keep the padding (no ``crop``)."""
    n, c, h, w = x_shape
    kh, kw, sh, sw, ph, pw, oh, ow = conv_geometry(x_shape, kernel_size, stride, padding)
    x_pad = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for i, j, view in windows(x_pad, (kh, kw), (sh, sw), (oh, ow)):
        if overwrite:
            view[...] = cols[:, :, i, j]
        else:
            view += cols[:, :, i, j]
    return x_pad[:, :, ph:ph + h, pw:pw + w] if crop else x_pad


# --- 5. batchnorm_backward (chapter 3) -------------------------------------------------------------

def batchnorm_problem():
    """``x``, ``weight``, ``bias`` and ``delta`` of a training-mode batch norm over axis 0."""
    rng = np.random.default_rng(5)
    return {"x": 2 * rng.standard_normal((5, 3)) + 1, "weight": rng.standard_normal(3),
            "bias": rng.standard_normal(3), "delta": rng.standard_normal((5, 3))}


def batchnorm_forward(x, weight, bias):
    return batch_norm_forward(np, x, weight, bias, np.zeros(x.shape[1]), np.ones(x.shape[1]), training=True)


def batchnorm_inputs():
    p = batchnorm_problem()
    _, (xhat, inv_std, _, _) = batchnorm_forward(p["x"], p["weight"], p["bias"])
    return {"delta": p["delta"], "xhat": xhat, "inv_std": inv_std.reshape(-1), "weight": p["weight"]}


def batchnorm_engine(delta, xhat, inv_std, weight):
    cache = (xhat, inv_std.reshape(1, -1), weight, True)
    return batch_norm_backward(np, delta, cache, (True, True, True))[:3]


def batchnorm_numeric(delta, xhat, inv_std, weight):
    p = batchnorm_problem()
    x, weight, bias = p["x"], p["weight"], p["bias"]
    loss = lambda: float((batchnorm_forward(x, weight, bias)[0] * delta).sum())
    return centred(loss, x), centred(loss, weight), centred(loss, bias)


def batchnorm_dx_wrong(delta, xhat, inv_std, weight, n=None):
    """``dx`` with the batch statistics' terms left out (``n`` None) or not divided by ``n``."""
    scale = weight * inv_std
    if n is None:
        return scale * delta
    return scale * (delta - (delta.sum(axis=0) + xhat * (delta * xhat).sum(axis=0)) / n)


# --- 6. concat_backward (chapter 4) ----------------------------------------------------------------

CONCAT_SHAPES = [(3, 2, 2), (3, 4, 2), (3, 1, 2)]


def concat_inputs():
    rng = np.random.default_rng(6)
    return {"delta": rng.standard_normal((3, 7, 2)), "sizes": (2, 4, 1), "axis": 1}


def concat_engine(delta, sizes, axis):
    return cat_backward(np, delta, (list(sizes), axis), (True,) * len(sizes))


def concat_numeric(delta, sizes, axis):
    xs = [np.zeros(shape) for shape in CONCAT_SHAPES]
    loss = lambda: float((cat_forward(np, *xs, axis=axis)[0] * delta).sum())
    return tuple(centred(loss, x) for x in xs)


def equal_parts(delta, sizes, axis):
    """A mistake: pieces of equal size."""
    return np.array_split(delta, len(sizes), axis=axis)


def along_axis_0(delta, sizes, axis):
    """A mistake: the right sizes along the wrong axis."""
    return np.split(delta, np.cumsum(sizes)[:-1], axis=0)


# --- 7. pathwise_sigma_grad (chapter 5, Theorem 2) -------------------------------------------------

def pathwise_inputs():
    rng = np.random.default_rng(7)
    return {"a": rng.standard_normal((8, 4)), "sigma": np.array([0.5, 1.0, 1.5, 0.8]),
            "eps": rng.standard_normal((8, 4))}


def pathwise_engine(a, sigma, eps):
    return ((a + sigma * eps > 0) * eps,)       # d relu(a + sigma eps) / d sigma, per sample


def pathwise_numeric(a, sigma, eps):
    levels = np.broadcast_to(sigma, a.shape).copy()       # one sigma per sample: per-sample derivatives
    relu_sum = lambda: float(np.maximum(a + levels * eps, 0).sum())
    return (centred(relu_sum, levels),)


# --- 8. fgsm (chapter 6) ---------------------------------------------------------------------------

def fgsm_inputs():
    rng = np.random.default_rng(8)
    x = rng.random((4, 6))
    x[0, :3], x[1, :3] = 0.0, 1.0                           # blank and saturated pixels: clipping matters
    return {"x": x, "grad": rng.standard_normal((4, 6)), "epsilon": 0.1}


def fgsm_engine(x, grad, epsilon):
    """The step of :func:`manualbp.attacks.fgsm`: ``clip(x + epsilon * sign(dL/dx), 0, 1)``."""
    return (np.clip(x + epsilon * np.sign(grad), 0, 1),)


# --- the exercises ---------------------------------------------------------------------------------

EXERCISES = {ex.name: ex for ex in [
    Exercise(
        "linear_backward", "linear_backward(x, weight, delta) -> (dx, dw, db)",
        "Eq. (2) for a dense layer v = x weight^T + b: the input's delta and the gradients of the "
        "weight and bias, summed over the batch.", 1,
        linear_inputs, linear_engine, ("dx", "dw", "db"),
        {"dx": "the shape of x", "dw": "the shape of weight", "db": "one entry per output neuron"},
        linear_numeric, batch=5),
    Exercise(
        "noise_backward", "noise_backward(delta, eps) -> dsigma",
        "Eq. (3): dL/dsigma = delta * eps, summed over the batch (sigma has the neuron shape).", 1,
        noise_inputs, noise_engine, ("dsigma",), {"dsigma": "the neuron shape of sigma"},
        noise_numeric, batch=5,
        mistakes=(("dsigma", lambda delta, eps: delta.sum(axis=0),
                   "dsigma is the batch sum of delta alone: the factor eps of Eq. (3) is missing"),)),
    Exercise(
        "sigma_update", "sigma_update(sigma, grad, m, v, t, lr, beta1, beta2, adam_eps) -> (sigma, m, v)",
        "Eq. (7): step t of Adam on the noise levels (moments m and v, bias-corrected), then the "
        "absolute value.", 1,
        sigma_inputs, sigma_engine, ("sigma", "m", "v"),
        {"sigma": "the shape of sigma", "m": "the shape of sigma", "v": "the shape of sigma"},
        mistakes=(
            ("sigma", sigma_step,
             "sigma has negative entries: the absolute value of Eq. (7) is missing"),
            ("sigma", lambda **k: np.abs(sigma_step(**k, bias_correction=False)),
             "sigma misses Adam's bias correction h / (1 - beta1^t), v / (1 - beta2^t) of Eq. (7)"),
            ("sigma", lambda **k: np.abs(sigma_step(**{**k, "t": k["t"] + 1})),
             "sigma uses the bias correction of step t + 1: t is already the number of this step"))),
    Exercise(
        "col2im", "col2im(cols, x_shape, kernel_size, stride, padding) -> x",
        "Fold the columns (N, C, KH, KW, OH, OW) back into an image of x_shape, adding where "
        "patches overlap and dropping the padding: the adjoint of im2col.", 2,
        col2im_inputs, col2im_engine, ("x",), {"x": "x_shape"},
        col2im_numeric,
        mistakes=(
            ("x", lambda **k: col2im_wrong(**k, overwrite=True),
             "x overwrites where patches overlap: col2im must add them (it is the adjoint of im2col)"),
            ("x", lambda **k: col2im_wrong(**k, crop=False),
             "x still has the padding: drop the padding rows and columns on each side"))),
    Exercise(
        "batchnorm_backward", "batchnorm_backward(delta, xhat, inv_std, weight) -> (dx, dweight, dbias)",
        "Batch norm over axis 0 of (N, F) with the batch's statistics: the input's delta and the "
        "gradients of weight and bias.", 3,
        batchnorm_inputs, batchnorm_engine, ("dx", "dweight", "dbias"),
        {"dx": "the shape of delta", "dweight": "the shape of weight", "dbias": "the shape of weight"},
        batchnorm_numeric, batch=5,
        mistakes=(
            ("dx", lambda **k: batchnorm_dx_wrong(**k),
             "dx treats the batch mean and variance as constants: the terms "
             "-(sum delta + xhat sum delta xhat) / N are missing"),
            ("dx", lambda **k: batchnorm_dx_wrong(**k, n=1),
             "dx: the 1/N of the mean is missing from (sum delta + xhat sum delta xhat) / N"))),
    Exercise(
        "concat_backward", "concat_backward(delta, sizes, axis) -> list of deltas",
        "A concatenation's backward: cut delta along axis into pieces of the inputs' sizes.", 4,
        concat_inputs, concat_engine, ("dx1", "dx2", "dx3"),
        {f"dx{i + 1}": f"the shape of input {i + 1}" for i in range(3)},
        concat_numeric,
        mistakes=(
            (None, equal_parts, "the pieces are of equal size: cut them at the inputs' sizes"),
            (None, along_axis_0, "delta is cut along axis 0: cut it along the concatenation's axis"))),
    Exercise(
        "pathwise_sigma_grad", "pathwise_sigma_grad(a, sigma, eps) -> array",
        "The per-sample pathwise estimate of dE[relu(a + sigma eps)]/dsigma: 1[a + sigma eps > 0] * eps.", 5,
        pathwise_inputs, pathwise_engine, ("grad",), {"grad": "the shape of a (one estimate per sample)"},
        pathwise_numeric, batch=8,
        mistakes=(
            ("grad", lambda a, sigma, eps: eps,
             "the ReLU's derivative 1[a + sigma eps > 0] is missing"),
            ("grad", lambda a, sigma, eps: (a > 0) * eps,
             "the ReLU's derivative is taken at a: take it at a + sigma eps, where the noise has moved it"))),
    Exercise(
        "fgsm", "fgsm(x, grad, epsilon) -> x_adv",
        "The fast gradient sign method: x + epsilon * sign(grad), clipped to the pixel range [0, 1].", 6,
        fgsm_inputs, fgsm_engine, ("x_adv",), {"x_adv": "the shape of x"},
        mistakes=(
            ("x_adv", lambda x, grad, epsilon: x + epsilon * np.sign(grad),
             "x_adv leaves [0, 1]: clip it to the pixel range"),
            ("x_adv", lambda x, grad, epsilon: np.clip(x + epsilon * grad, 0, 1),
             "x_adv moves by epsilon * grad: FGSM moves by epsilon * sign(grad)"),
            ("x_adv", lambda x, grad, epsilon: np.clip(x - epsilon * np.sign(grad), 0, 1),
             "x_adv steps down the gradient: FGSM adds epsilon * sign(grad) to raise the loss"))),
]}


# --- the checker -----------------------------------------------------------------------------------

def agrees(got, expected, tolerance=ENGINE_TOLERANCE):
    return got.shape == expected.shape and relative_error(got, expected) < tolerance


def as_outputs(ex, got):
    """The learner's return value as one float64 array per output, or a diagnosis string."""
    names = ex.outputs
    listed = "(" + ", ".join(names) + ")"
    if got is None:
        return f"returns None (is the return statement missing?); expected {listed if len(names) > 1 else names[0]}"
    if len(names) > 1:
        if not isinstance(got, (tuple, list)):
            return f"returns one {type(got).__name__}; expected {len(names)} values {listed}"
        if len(got) != len(names):
            return f"returns {len(got)} values; expected {len(names)}: {listed}"
    else:
        got = (got,)
    arrays = []
    for name, value in zip(names, got):
        if value is None:
            return f"{name} is None"
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return f"{name} is a {type(value).__name__}, not an array"
        arrays.append(array)
    return arrays


def diagnose_output(ex, name, got, expected, inputs):
    """What is wrong with output ``name`` (``got`` differs from ``expected``), in words."""
    for output, wrong, words in ex.mistakes:
        if output == name and agrees(got, np.asarray(wrong(**inputs), dtype=np.float64)):
            return words
    n = ex.batch
    if got.shape != expected.shape:
        if got.ndim == 2 and got.shape == expected.shape[::-1] and agrees(got.T, expected):
            return f"{name} is transposed: expected shape {expected.shape}, got {got.shape}"
        if n and got.shape == (n,) + expected.shape:
            return f"{name} is not summed over the batch: expected shape {expected.shape}, got {got.shape}"
        return f"returns {name} of shape {got.shape}; expected {expected.shape}, {ex.shape_of[name]}"
    if not np.isfinite(got).all():
        return f"{name} contains NaN or infinity"
    if agrees(-got, expected):
        return f"{name} has the wrong sign"
    if got.ndim == 2 and got.shape[0] == got.shape[1] and agrees(got.T, expected):
        return f"{name} is transposed"
    norm = float((expected * expected).sum())
    factor = float((got * expected).sum()) / norm if norm else 0.0
    if factor and agrees(got, factor * expected):
        if n and abs(factor - n) < 1e-6 * n:
            return f"{name} is N = {n} times too large: the 1/N of the mean is missing"
        if n and abs(factor - 1 / n) < 1e-6 / n:
            return f"{name} is N = {n} times too small: averaged over the batch where it is summed"
        return f"{name} is {factor:.3g} times the engine's"
    diff = np.abs(got - expected)
    index = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff)), diff.shape))
    return (f"{name} differs from the engine by max rel err {relative_error(got, expected):.1e} "
            f"at index {index}")


def diagnose(ex, got, inputs):
    """``(passed, line)`` for the learner's return value ``got`` on ``inputs``."""
    arrays = as_outputs(ex, got)
    if isinstance(arrays, str):
        return False, f"wrong: {ex.name}: {arrays}"
    expected = [np.asarray(e, dtype=np.float64) for e in ex.engine(**inputs)]
    if not all(agrees(g, e) for g, e in zip(arrays, expected)):
        for output, wrong, words in ex.mistakes:
            if output is None and all(agrees(g, np.asarray(w, dtype=np.float64))
                                      for g, w in zip(arrays, wrong(**inputs))):
                return False, f"wrong: {ex.name}: {words}"
    for name, g, e in zip(ex.outputs, arrays, expected):
        if not agrees(g, e):
            return False, f"wrong: {ex.name}: {diagnose_output(ex, name, g, e, inputs)}"
    error = max(relative_error(g, e) for g, e in zip(arrays, expected))
    if ex.finite_differences is None:
        return True, f"pass: {ex.name} agrees with the engine (max rel err {error:.1e})"
    for name, g, numeric in zip(ex.outputs, arrays, ex.finite_differences(**inputs)):
        if not agrees(g, numeric, FINITE_DIFFERENCE_TOLERANCE):
            return False, (f"wrong: {ex.name}: {name} agrees with the engine but not with finite "
                           f"differences (rel err {relative_error(g, numeric):.1e})")
    return True, f"pass: {ex.name} agrees with the engine and finite differences (max rel err {error:.1e})"


def copied(value):
    return value.copy() if isinstance(value, np.ndarray) else value


def check(name, function):
    """Run ``function`` for exercise ``name`` on its seeded inputs, print one line (pass, wrong
    with a diagnosis, or todo) and return whether it passed."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}: the exercises are {', '.join(EXERCISES)}")
    ex = EXERCISES[name]
    inputs = ex.inputs()
    try:
        got = function(*(copied(v) for v in inputs.values()))      # copies: the learner may write in place
    except NotImplementedError:
        print(f"todo: {name} is not written yet")
        return False
    except Exception as err:                                       # noqa: BLE001 -- any error is a diagnosis
        message = str(err).strip().splitlines()
        print(f"wrong: {name} raised {type(err).__name__}" + (f": {message[0]}" if message else ""))
        return False
    passed, line = diagnose(ex, got, inputs)
    print(line)
    return passed
