"""Parity of manualbp's hand-written gradients with autograd libraries (PyTorch, JAX).

:func:`verify_model` rebuilds any manualbp model in the reference framework from the same
weights, buffers and noise draws (``named_parameters``, ``named_eps``), layer by layer, runs
forward and backward in both and reports per array the largest absolute and relative error.
``python -m manualbp.verify --against torch`` does this for every model of the zoo.

The reference frameworks are imported only when a comparison runs.
"""
from . import containers  # noqa: F401  (registers the container rules)
from .compare import TOLERANCES, FrameworkMissing, Report, Row, verify_model
from .walk import RULES, ConversionError, Walker, register

__all__ = ["ConversionError", "FrameworkMissing", "RULES", "Report", "Row", "TOLERANCES", "Walker",
           "register", "verify_model"]
