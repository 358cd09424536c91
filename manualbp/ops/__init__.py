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
relu, leaky_relu, sigmoid, tanh                      ``activations.py``
add, normalize, dropout                              ``elementwise.py``
softmax_cross_entropy  ``loss.py``          (the seed of Eq. 2)
=====================  =========================================================

Which function runs for each op on a backend is that backend's table
(:meth:`manualbp.backend.Backend.table`).
"""
from .activations import leaky_relu, relu, sigmoid, tanh
from .base import OPS, Op
from .conv import conv2d
from .elementwise import add, dropout, normalize
from .linear import linear
from .loss import softmax_cross_entropy
from .noise import gaussian_noise
from .norm import batch_norm
from .pool import avg_pool2d, flatten, global_avg_pool2d, max_pool2d

__all__ = ["OPS", "Op", "add", "avg_pool2d", "batch_norm", "conv2d", "dropout", "flatten", "gaussian_noise",
           "global_avg_pool2d", "leaky_relu", "linear", "max_pool2d", "normalize", "relu", "sigmoid",
           "softmax_cross_entropy", "tanh"]
