"""manualbp: neural networks with hand-written backpropagation and learned Gaussian noise levels.

Every neuron can get noise ``z = sigma * eps`` (Eq. 1 of Xiao, Zhang & Peng, "Noise Optimization
for Artificial Neural Networks"); ``dL/dsigma = delta * eps`` (Eq. 3) reuses the residual errors
``delta`` that backpropagation computes anyway (Eq. 2), and ``sigma`` is updated by Eq. (7).
"""
from .backend import Backend, BackendError, get_backend
from .model import Sequential, held_noise, named_eps, noise_layers

__version__ = "0.1.0"
__all__ = ["Backend", "BackendError", "Sequential", "get_backend", "held_noise", "named_eps",
           "noise_layers"]
