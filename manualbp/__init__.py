"""manualbp: neural networks with hand-written backpropagation and learned Gaussian noise levels.

Every neuron can get noise ``z = sigma * eps`` (Eq. 1 of Xiao, Zhang & Peng, "Noise Optimization
for Artificial Neural Networks"); ``dL/dsigma = delta * eps`` (Eq. 3) reuses the residual errors
``delta`` that backpropagation computes anyway (Eq. 2), and ``sigma`` is updated by Eq. (7).
"""
from .parallel import let_blas_threads_sleep, share_cores_among_local_ranks

let_blas_threads_sleep()                # before NumPy loads OpenBLAS: see manualbp/parallel.py
share_cores_among_local_ranks()

from .backend import Backend, BackendError, get_backend  # noqa: E402
from .model import Sequential, held_noise, named_eps, noise_layers  # noqa: E402

__version__ = "0.1.0"
__all__ = ["Backend", "BackendError", "Sequential", "get_backend", "held_noise", "named_eps",
           "noise_layers"]
