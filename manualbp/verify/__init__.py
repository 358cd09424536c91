"""Parity of manualbp's hand-written gradients with autograd libraries (PyTorch, JAX).

:func:`verify_model` rebuilds any manualbp model in the reference framework from the same
weights, buffers and noise draws (``named_parameters``, ``named_eps``), layer by layer, runs
forward and backward in both and reports per array the largest absolute and relative error.
``python -m manualbp.verify --against torch`` does this for every model of the zoo.
:func:`to_torch` turns any manualbp model into a ``torch.nn.Module`` through the same rules;
:func:`from_torch` traces a ``torch.nn.Module`` (``torch.export``) into a manualbp graph of ops,
and :func:`compare_torch` compares every gradient of the user's own module with the hand-written
backward of its import, telling round-off and PyTorch's own error apart from a wrong gradient
(docs/verifying_pytorch.md). ``python -m manualbp.verify --torchvision NAME`` does so for
torchvision's classifiers.

The reference frameworks are imported only when a comparison runs or a model is converted.
"""
from .compare import TOLERANCES, FrameworkMissing, Report, Row, verify_model
from .walk import RULES, ConversionError, Walker, register

__all__ = ["ConversionError", "FrameworkMissing", "RULES", "Report", "Row", "TOLERANCES", "Walker",
           "register", "to_torch", "from_torch", "compare_torch", "verify_model"]

#: the names that need torch, by the module that defines them (imported on first use)
_WITH_TORCH = {"to_torch": "torch_module", "from_torch": "torch_import", "compare_torch": "torch_import"}


def __getattr__(name):
    """``to_torch``, ``from_torch``, ``compare_torch``: imported (with torch) on first use."""
    if name not in _WITH_TORCH:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib
    value = getattr(importlib.import_module(f".{_WITH_TORCH[name]}", __name__), name)
    globals()[name] = value
    return value
