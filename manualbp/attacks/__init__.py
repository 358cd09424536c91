"""Adversarial attacks whose input gradient is the engine's own: ``model.backward`` runs Eq. (2)
down to the input. Everything is in pixel space ``[0, 1]``; ``budget`` is the L-inf radius.

White box: :func:`fgsm`, :func:`pgd`, :func:`eot_pgd` (randomised models), :func:`lbfgs` (the
paper's form) and :func:`lbfgs_targeted` (Szegedy et al.'s). Black box: :mod:`.transfer`.
Table 2 settings: :attr:`manualbp.datasets.Dataset.attacks`; the paper's published results:
:mod:`.published`.
"""
from .base import check_images, input_gradient
from .eot import eot_pgd, expected_gradient
from .fgsm import fgsm
from .lbfgs import lbfgs, lbfgs_targeted
from .pgd import pgd
from .transfer import surrogate_builder, surrogate_training

__all__ = ["check_images", "eot_pgd", "expected_gradient", "fgsm", "input_gradient", "lbfgs",
           "lbfgs_targeted", "pgd", "surrogate_builder", "surrogate_training"]
