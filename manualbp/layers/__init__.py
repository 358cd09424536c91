"""Layers: each a forward pass and a hand-written backward pass (Eq. 1 forward, Eq. 2 backward)."""
from .activations import ACTIVATIONS, LeakyReLU, ReLU, Sigmoid
from .base import Module
from .linear import Linear
from .losses import SoftmaxCrossEntropy
from .noise import NOISE_MODES, GaussianNoise

__all__ = ["ACTIVATIONS", "GaussianNoise", "LeakyReLU", "Linear", "Module", "NOISE_MODES", "ReLU",
           "Sigmoid", "SoftmaxCrossEntropy"]
from .norm import BatchNorm1d, BatchNorm2d
from .normalize import Normalize

__all__ += ["BatchNorm1d", "BatchNorm2d", "Normalize"]
