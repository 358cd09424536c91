"""Element-wise activations ``x_next = phi(v)`` (Eq. 1); backward multiplies by ``phi'(v)``
(Eq. 2). Shapes: any; output and gradients have the shape of the input. At a kink ``phi'`` takes
PyTorch's value there."""
import math

from ..parallel import PARALLEL_MIN_SIZE, parallel_blocks
from .base import Op


def relu_forward(xp, v):
    """``phi(v) = max(v, 0)``, ``phi'(v) = 1[v > 0]``."""
    return xp.maximum(v, 0), v > 0                                     # x = phi(v), Eq. (1)


def relu_backward(xp, delta, active, need):
    return (delta * active if need[0] else None,)                      # phi'(v) * delta, Eq. (2)


relu = Op("relu", ("v",), relu_forward, relu_backward)


def relu_forward_in_layout(xp, v):
    """The reference's, in ``v``'s memory layout (CuPy's element-wise results are C-ordered)."""
    active = xp.greater(v, 0, out=xp.empty_like(v, dtype=bool))
    return xp.maximum(v, 0, out=xp.empty_like(v)), active


def relu_backward_in_layout(xp, delta, active, need):
    return (xp.multiply(delta, active, out=xp.empty_like(delta)) if need[0] else None,)


relu.kernel("cupy", relu_forward_in_layout, relu_backward_in_layout)


def relu_forward_threads(xp, v):
    """The reference's, in ``v``'s memory layout, by blocks of channels (or samples) on threads
    (a small ``v``, or one without a channel axis: the reference itself)."""
    if v.size < PARALLEL_MIN_SIZE or v.ndim < 2:
        return relu_forward(xp, v)
    out, active = xp.empty_like(v), xp.empty_like(v, dtype=bool)

    def block(cs, ns):
        xp.greater(v[ns, cs], 0, out=active[ns, cs])
        xp.maximum(v[ns, cs], 0, out=out[ns, cs])

    parallel_blocks(xp, v.shape[1], len(v), v.size, block)
    return out, active


def relu_backward_threads(xp, delta, active, need):
    if not need[0] or delta.size < PARALLEL_MIN_SIZE or delta.ndim < 2:
        return relu_backward(xp, delta, active, need)
    dx = xp.empty_like(delta)
    parallel_blocks(xp, delta.shape[1], len(delta), delta.size,
                    lambda cs, ns: xp.multiply(delta[ns, cs], active[ns, cs], out=dx[ns, cs]))
    return (dx,)


relu.kernel("numpy", relu_forward_threads, relu_backward_threads)


def leaky_relu_forward(xp, v, slope=0.01):
    """``phi(v) = v`` for ``v > 0``, ``slope * v`` otherwise."""
    active = v > 0
    return xp.where(active, v, slope * v), (active, slope)             # x = phi(v), Eq. (1)


def leaky_relu_backward(xp, delta, cache, need):
    active, slope = cache
    return (xp.where(active, delta, slope * delta) if need[0] else None,)   # phi'(v) * delta, Eq. (2)


leaky_relu = Op("leaky_relu", ("v",), leaky_relu_forward, leaky_relu_backward)


def sigmoid_forward(xp, v):
    """``phi(v) = 1 / (1 + exp(-v))``, computed as ``(1 + tanh(v / 2)) / 2`` (no overflow);
    ``phi'(v) = phi(v) (1 - phi(v))``."""
    y = 0.5 * (1 + xp.tanh(0.5 * v))                                   # x = phi(v), Eq. (1)
    return y, y


def sigmoid_backward(xp, delta, y, need):
    return (delta * y * (1 - y) if need[0] else None,)                 # phi'(v) * delta, Eq. (2)


sigmoid = Op("sigmoid", ("v",), sigmoid_forward, sigmoid_backward)


def tanh_forward(xp, v):
    """``phi(v) = tanh(v)``, ``phi'(v) = 1 - tanh(v)^2``."""
    y = xp.tanh(v)                                                     # x = phi(v), Eq. (1)
    return y, y


def tanh_backward(xp, delta, y, need):
    return (delta * (1 - y * y) if need[0] else None,)                 # phi'(v) * delta, Eq. (2)


tanh = Op("tanh", ("v",), tanh_forward, tanh_backward)


def hardtanh_forward(xp, v, min_value=-1.0, max_value=1.0):
    """``phi(v) = min(max(v, min_value), max_value)``, ``phi'(v) = 1[min_value < v < max_value]``
    (0 at the bounds); ReLU6 is ``hardtanh(v, 0, 6)``."""
    inside = (v > min_value) & (v < max_value)
    return xp.clip(v, min_value, max_value), inside                    # x = phi(v), Eq. (1)


def hardtanh_backward(xp, delta, inside, need):
    return (delta * inside if need[0] else None,)                      # phi'(v) * delta, Eq. (2)


hardtanh = Op("hardtanh", ("v",), hardtanh_forward, hardtanh_backward)


def hardswish_forward(xp, v):
    """``phi(v) = v min(max(v + 3, 0), 6) / 6``; ``phi'(v) = 0`` for ``v <= -3``, ``v / 3 + 1/2``
    for ``-3 < v < 3``, ``1`` for ``v >= 3``."""
    return v * xp.clip(v + 3, 0, 6) / 6, v                             # x = phi(v), Eq. (1)


def hardswish_backward(xp, delta, v, need):
    if not need[0]:
        return (None,)
    slope = xp.where(v < 3, v / 3 + 0.5, 1) * (v > -3)
    return (delta * slope,)                                            # phi'(v) * delta, Eq. (2)


hardswish = Op("hardswish", ("v",), hardswish_forward, hardswish_backward)


def hardsigmoid_forward(xp, v):
    """``phi(v) = min(max(v + 3, 0), 6) / 6``, ``phi'(v) = 1/6`` for ``-3 < v < 3``, else 0."""
    inside = (v > -3) & (v < 3)
    return xp.clip(v + 3, 0, 6) / 6, inside                            # x = phi(v), Eq. (1)


def hardsigmoid_backward(xp, delta, inside, need):
    return (delta * inside / 6 if need[0] else None,)                  # phi'(v) * delta, Eq. (2)


hardsigmoid = Op("hardsigmoid", ("v",), hardsigmoid_forward, hardsigmoid_backward)


def silu_forward(xp, v):
    """``phi(v) = v s(v)`` with ``s`` the sigmoid (as :func:`sigmoid_forward`);
    ``phi'(v) = s(v) (1 + v (1 - s(v)))``."""
    s = 0.5 * (1 + xp.tanh(0.5 * v))
    return v * s, (v, s)                                               # x = phi(v), Eq. (1)


def silu_backward(xp, delta, cache, need):
    v, s = cache
    return (delta * s * (1 + v * (1 - s)) if need[0] else None,)       # phi'(v) * delta, Eq. (2)


silu = Op("silu", ("v",), silu_forward, silu_backward)

#: W. J. Cody, "Rational Chebyshev approximations for the error function", Math. Comp. 23 (1969):
#: (numerator, denominator) coefficients, highest power first, of erf for |x| <= 0.46875 (in x^2),
#: of erfc(y) exp(y^2) for 0.46875 < y <= 4 (in y) and of its tail for y > 4 (in 1 / y^2)
ERF_NEAR_ZERO = ((1.85777706184603153e-1, 3.16112374387056560e0, 1.13864154151050156e2, 3.77485237685302021e2,
                  3.20937758913846947e3),
                 (1.0, 2.36012909523441209e1, 2.44024637934444173e2, 1.28261652607737228e3, 2.84423683343917062e3))
ERFC_MIDDLE = ((2.15311535474403846e-8, 5.64188496988670089e-1, 8.88314979438837594e0, 6.61191906371416295e1,
                2.98635138197400131e2, 8.81952221241769090e2, 1.71204761263407058e3, 2.05107837782607147e3,
                1.23033935479799725e3),
               (1.0, 1.57449261107098347e1, 1.17693950891312499e2, 5.37181101862009858e2, 1.62138957456669019e3,
                3.29079923573345963e3, 4.36261909014324716e3, 3.43936767414372164e3, 1.23033935480374942e3))
ERFC_TAIL = ((1.63153871373020978e-2, 3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1,
              1.60837851487422766e-2, 6.58749161529837803e-4),
             (1.0, 2.56852019228982242e0, 1.87295284992346047e0, 5.27905102951428412e-1, 6.05183413124413191e-2,
              2.33520497626869185e-3))


def rational(coefficients, t):
    """``p(t) / q(t)`` for ``coefficients = (p, q)``, each highest power first (Horner's rule)."""
    numerator, denominator = 0.0, 0.0
    for c in coefficients[0]:
        numerator = numerator * t + c
    for c in coefficients[1]:
        denominator = denominator * t + c
    return numerator / denominator


def erf(xp, x):
    """``erf(x) = 2 / sqrt(pi) int_0^x exp(-t^2) dt`` to float64 round-off (Cody's approximations):
    ``x R(x^2)`` for ``|x| <= 0.46875``, else ``sign(x) (1 - erfc(|x|))`` with ``erfc(y) =
    exp(-y^2) R(y)`` up to 4 and ``exp(-y^2) (1 / sqrt(pi) - R(1 / y^2) / y^2) / y`` beyond
    (``erf(x)`` rounds to ``sign(x)`` from ``|x| = 6``)."""
    y = xp.minimum(xp.abs(x), 6.0)
    near_zero = x * rational(ERF_NEAR_ZERO, y * y)
    far = xp.maximum(y, 4.0)                                           # the tail's y (4 where unused)
    tail = (1 / math.sqrt(math.pi) - rational(ERFC_TAIL, 1 / (far * far)) / (far * far)) / far
    sixteenths = xp.floor(16 * y) / 16                                 # y^2 split so exp keeps its digits
    gaussian = xp.exp(-sixteenths * sixteenths) * xp.exp(-(y - sixteenths) * (y + sixteenths))
    erfc = gaussian * xp.where(y <= 4, rational(ERFC_MIDDLE, y), tail)
    return xp.where(y <= 0.46875, near_zero, xp.sign(x) * (1 - erfc))


#: GELU's tanh approximation: ``Phi(v) ~ (1 + tanh(sqrt(2 / pi) (v + 0.044715 v^3))) / 2``
SQRT_2_OVER_PI, GELU_CUBIC = math.sqrt(2 / math.pi), 0.044715


def gelu_forward(xp, v, approximate="none"):
    """``phi(v) = v Phi(v)``, ``Phi(v) = (1 + erf(v / sqrt(2))) / 2`` the standard normal CDF:
    ``phi'(v) = Phi(v) + v exp(-v^2 / 2) / sqrt(2 pi)``. ``approximate="tanh"``: ``Phi(v) ~
    (1 + t) / 2``, ``t = tanh(u)``, ``u = sqrt(2 / pi) (v + 0.044715 v^3)``, and ``phi'(v) =
    (1 + t) / 2 + v (1 - t^2) u'(v) / 2``."""
    if approximate == "tanh":
        t = xp.tanh(SQRT_2_OVER_PI * (v + GELU_CUBIC * v * v * v))
        return 0.5 * v * (1 + t), (v, approximate, t)                  # x = phi(v), Eq. (1)
    if approximate != "none":
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    cdf = 0.5 * (1 + erf(xp, v / math.sqrt(2)))
    return v * cdf, (v, approximate, cdf)                              # x = phi(v), Eq. (1)


def gelu_backward(xp, delta, cache, need):
    if not need[0]:
        return (None,)
    v, approximate, phi = cache                                        # t (tanh) or Phi(v)
    if approximate == "tanh":
        slope = 0.5 * (1 + phi) + 0.5 * v * (1 - phi * phi) * SQRT_2_OVER_PI * (1 + 3 * GELU_CUBIC * v * v)
    else:
        slope = phi + v * xp.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
    return (delta * slope,)                                            # phi'(v) * delta, Eq. (2)


gelu = Op("gelu", ("v",), gelu_forward, gelu_backward)


@relu.rule("torch")
def relu_torch(v):
    import torch
    return torch.relu(v)


@relu.rule("jax")
def relu_jax(v):
    import jax.numpy as jnp
    return jnp.where(v > 0, v, 0)            # derivative 0 at 0, as the engine's and PyTorch's


@leaky_relu.rule("torch")
def leaky_relu_torch(v, slope=0.01):
    import torch.nn.functional as F
    return F.leaky_relu(v, slope)


@leaky_relu.rule("jax")
def leaky_relu_jax(v, slope=0.01):
    import jax.numpy as jnp
    return jnp.where(v > 0, v, slope * v)


@sigmoid.rule("torch")
def sigmoid_torch(v):
    import torch
    return torch.sigmoid(v)


@sigmoid.rule("jax")
def sigmoid_jax(v):
    import jax
    return jax.nn.sigmoid(v)


@tanh.rule("torch")
def tanh_torch(v):
    import torch
    return torch.tanh(v)


@tanh.rule("jax")
def tanh_jax(v):
    import jax.numpy as jnp
    return jnp.tanh(v)


@hardtanh.rule("torch")
def hardtanh_torch(v, min_value=-1.0, max_value=1.0):
    import torch.nn.functional as F
    return F.hardtanh(v, min_value, max_value)


@hardtanh.rule("jax")
def hardtanh_jax(v, min_value=-1.0, max_value=1.0):
    import jax.numpy as jnp
    return jnp.where(v <= min_value, min_value, jnp.where(v >= max_value, max_value, v))   # slope 0 at the bounds


@hardswish.rule("torch")
def hardswish_torch(v):
    import torch.nn.functional as F
    return F.hardswish(v)


@hardswish.rule("jax")
def hardswish_jax(v):
    import jax.numpy as jnp
    return jnp.where(v <= -3, 0.0, jnp.where(v < 3, v * (v + 3) / 6, v))


@hardsigmoid.rule("torch")
def hardsigmoid_torch(v):
    """``relu6(v + 3) / 6``: F.hardsigmoid's float64 backward uses 1/6 rounded to float32."""
    import torch.nn.functional as F
    return F.relu6(v + 3) / 6


for _name in ("aten.hardsigmoid.default", "aten.hardsigmoid_.default"):
    hardsigmoid.inexact_in_torch(_name, "its float64 derivative is 1/6 rounded to float32, 1/6 + 5.0e-9",
                                 hardsigmoid_torch)


@hardsigmoid.rule("jax")
def hardsigmoid_jax(v):
    import jax.numpy as jnp
    return jnp.where(v <= -3, 0.0, jnp.where(v >= 3, 1.0, (v + 3) / 6))


@silu.rule("torch")
def silu_torch(v):
    import torch.nn.functional as F
    return F.silu(v)


@silu.rule("jax")
def silu_jax(v):
    import jax
    return v * jax.nn.sigmoid(v)


@gelu.rule("torch")
def gelu_torch(v, approximate="none"):
    import torch.nn.functional as F
    return F.gelu(v, approximate=approximate)


@gelu.rule("jax")
def gelu_jax(v, approximate="none"):
    import jax
    return jax.nn.gelu(v, approximate=approximate == "tanh")


@relu.traces("aten.relu.default", "aten.relu_.default")
@sigmoid.traces("aten.sigmoid.default", "aten.sigmoid_.default")
@tanh.traces("aten.tanh.default", "aten.tanh_.default")
@hardswish.traces("aten.hardswish.default", "aten.hardswish_.default")
@hardsigmoid.traces("aten.hardsigmoid.default", "aten.hardsigmoid_.default")
@silu.traces("aten.silu.default", "aten.silu_.default")
def activation_from_aten(call, v):
    return [v], {}


@leaky_relu.traces("aten.leaky_relu.default", "aten.leaky_relu_.default")
def leaky_relu_from_aten(call, v, negative_slope=0.01):
    return [v], {"slope": float(negative_slope)}


@hardtanh.traces("aten.hardtanh.default", "aten.hardtanh_.default")
def hardtanh_from_aten(call, v, min_val=-1, max_val=1):
    return [v], {"min_value": float(min_val), "max_value": float(max_val)}


@hardtanh.traces("aten.relu6.default")
def relu6_from_aten(call, v):
    return [v], {"min_value": 0.0, "max_value": 6.0}


@gelu.traces("aten.gelu.default", "aten.gelu_.default")
def gelu_from_aten(call, v, approximate="none"):
    if approximate not in ("none", "tanh"):
        call.refuse(f"approximate={approximate!r}; expected 'none' or 'tanh'")
    return [v], {"approximate": approximate}
