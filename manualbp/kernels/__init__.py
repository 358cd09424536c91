"""Fast kernels: for each hot reference layer or optimiser, a subclass that computes the same
thing faster, registered per backend.

A kernel keeps its reference's interface, parameters and names (it inherits them) and replaces
only ``forward`` / ``backward`` (or ``step``). ``get_backend(..., kernels="fast")`` (the default)
builds every layer and optimiser that has a kernel on that backend as its kernel;
``kernels="reference"`` builds the plain code of :mod:`manualbp.layers` and
:mod:`manualbp.optim`. ``tests/test_kernels.py`` proves each kernel equal to its reference, alone
and inside every zoo model.

The NumPy kernels use the batch-innermost layout of feature maps, threads
(:mod:`manualbp.parallel`), reused buffers and in-place gradients. CuPy's element-wise results
are C-ordered, so on CuPy feature maps are stored channel-major instead
(:mod:`manualbp.kernels.channel_major`), beside the kernels that keep any layout.
"""
import functools


@functools.lru_cache(maxsize=None)
def registry(backend_name):
    """``{reference class: kernel class}`` of the backend ``"numpy"`` or ``"cupy"``."""
    from ..layers import (BasicBlock, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, GaussianNoise,
                          GlobalAvgPool2d, Linear, MaxPool2d)
    from ..model import Sequential
    from ..optim import SGD, Adam
    from ..layers import ReLU
    from .channel_major import (BatchNorm2dInLayout, Conv2dChannelMajor, GaussianNoiseInLayout,
                                MaxPool2dChannelMajor, ReLUInLayout)
    from .containers import SequentialKernel
    from .conv import Conv2dKernel
    from .linear import LinearKernel
    from .noise import GaussianNoiseKernel
    from .norm import BatchNorm1dKernel, BatchNorm2dKernel
    from .optim import AdamKernel, SGDKernel
    from .pool import FlattenKernel, GlobalAvgPool2dKernel, MaxPool2dKernel
    from .residual import BasicBlockKernel

    generic = {Sequential: SequentialKernel, Linear: LinearKernel, BasicBlock: BasicBlockKernel,
               Adam: AdamKernel, SGD: SGDKernel, GaussianNoise: GaussianNoiseKernel,
               GlobalAvgPool2d: GlobalAvgPool2dKernel, Flatten: FlattenKernel}
    if backend_name == "cupy":
        return {**generic, Conv2d: Conv2dChannelMajor, BatchNorm2d: BatchNorm2dInLayout, ReLU: ReLUInLayout,
                MaxPool2d: MaxPool2dChannelMajor, GaussianNoise: GaussianNoiseInLayout}
    return {**generic, Conv2d: Conv2dKernel, BatchNorm1d: BatchNorm1dKernel, BatchNorm2d: BatchNorm2dKernel,
            MaxPool2d: MaxPool2dKernel}


def reference_of(cls):
    """The reference class that ``cls`` is the kernel of on some backend, or ``cls`` itself."""
    for backend_name in ("numpy", "cupy"):
        for reference, kernel in registry(backend_name).items():
            if kernel is cls:
                return reference
    return cls
