"""The ops: each a reference pair of plain functions with an explicit cache, fast kernels of the
same signature per backend, and its PyTorch and JAX rules, in one file per family
(:mod:`manualbp.ops.base` says how an op is written and registered).

=====================  =========================================================
op                     file
=====================  =========================================================
linear                 ``linear.py``        (Eq. 1 and 2, dense)
conv2d                 ``conv.py``          (Eq. 1 and 2, feature maps; im2col)
gaussian_noise         ``noise.py``         (Eq. 1 noise, Eq. 3)
batch_norm             ``norm.py``
max_pool2d, avg_pool2d, global_avg_pool2d, flatten   ``pool.py``
relu, leaky_relu, sigmoid, tanh, hardtanh, hardswish, hardsigmoid, silu, gelu   ``activations.py``
add, sub, mul, scale, mean, total, normalize, dropout  ``elementwise.py``
softmax_cross_entropy  ``loss.py``          (the seed of Eq. 2)
reshape, permute, take, cat, pad, roll, expand        ``shape.py``  (moving values, no arithmetic)
layer_norm, softmax, matmul, attention, gather        ``transformer.py``
=====================  =========================================================

Which function runs for each op on a backend is that backend's table
(:meth:`manualbp.backend.Backend.table`).
"""
from .activations import gelu, hardsigmoid, hardswish, hardtanh, leaky_relu, relu, sigmoid, silu, tanh
from .base import OPS, Op
from .conv import conv2d
from .elementwise import add, dropout, mean, mul, normalize, scale, sub, total
from .linear import linear
from .loss import softmax_cross_entropy
from .noise import gaussian_noise
from .norm import batch_norm
from .pool import avg_pool2d, flatten, global_avg_pool2d, max_pool2d
from .shape import cat, expand, pad, permute, reshape, roll, take
from .transformer import attention, gather, layer_norm, matmul, softmax

__all__ = ["OPS", "Op", "add", "attention", "avg_pool2d", "batch_norm", "cat", "conv2d", "dropout", "expand",
           "flatten", "gather", "gaussian_noise", "gelu", "global_avg_pool2d", "hardsigmoid", "hardswish", "hardtanh",
           "layer_norm", "leaky_relu", "linear", "matmul", "max_pool2d", "mean", "mul", "normalize", "pad", "permute",
           "relu", "reshape", "roll", "scale", "sigmoid", "silu", "softmax", "softmax_cross_entropy", "sub", "take",
           "tanh", "total"]
