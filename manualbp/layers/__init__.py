"""Layers: each a forward pass and a hand-written backward pass (Eq. 1 forward, Eq. 2 backward)."""
from .activations import (ACTIVATIONS, GELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, ReLU, Sigmoid, SiLU,
                          Tanh)
from .base import Module
from .dropout import Dropout
from .linear import Linear
from .losses import SoftmaxCrossEntropy
from .noise import NOISE_MODES, GaussianNoise

__all__ = ["ACTIVATIONS", "Dropout", "GaussianNoise", "LeakyReLU", "Linear", "Module", "NOISE_MODES", "ReLU",
           "Sigmoid", "SoftmaxCrossEntropy", "Tanh"]
__all__ += ["GELU", "Hardsigmoid", "Hardswish", "Hardtanh", "SiLU"]
from .norm import BatchNorm1d, BatchNorm2d
from .normalize import Normalize

__all__ += ["BatchNorm1d", "BatchNorm2d", "Normalize"]
from .conv import Conv2d
from ..ops.im2col import col2im, conv2d_naive, im2col
from .pool import AdaptiveAvgPool2d, AvgPool2d, Flatten, GlobalAvgPool2d, MaxPool2d

__all__ += ["AdaptiveAvgPool2d", "AvgPool2d", "Conv2d", "Flatten", "GlobalAvgPool2d", "MaxPool2d", "col2im",
            "conv2d_naive", "im2col"]
from .graph import INPUT, Add, Graph, Sequential
from .residual import BasicBlock, Projection

__all__ += ["Add", "BasicBlock", "Graph", "INPUT", "Projection", "Sequential"]
from .apply import Apply, Constant, Parameter

__all__ += ["Apply", "Constant", "Parameter"]
