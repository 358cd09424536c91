"""Adversarial attacks whose input gradient is the engine's own: ``model.backward`` runs Eq. (2)
down to the input. Everything is in pixel space ``[0, 1]``.

White box: :func:`fgsm`, :func:`pgd`, :func:`eot_pgd` (randomised models), :func:`lbfgs` (the
paper's form) and :func:`lbfgs_targeted` (Szegedy et al.'s). Black box: :mod:`.transfer`.
Table 2 settings: :mod:`.presets`; the paper's published results: :mod:`.published`.
"""
from .base import check_images, input_gradient
from .eot import eot_pgd, expected_gradient
from .fgsm import fgsm
from .lbfgs import lbfgs, lbfgs_targeted
from .pgd import pgd
from .presets import PRESETS, preset
from .transfer import SURROGATES, build_surrogate, register_surrogate


def _lbfgs_next_class(model, x, y, **options):
    """Szegedy's targeted L-BFGS aimed at the next class ``(y + 1) mod K``; returns ``x_adv``."""
    classes = int(model.forward(x[:1]).shape[1])
    return lbfgs_targeted(model, x, (y + 1) % classes, **options)[0]


#: attack name -> ``attack(model, x, y, **params) -> x_adv``
ATTACKS = {"fgsm": fgsm, "pgd": pgd, "eot-pgd": eot_pgd, "lbfgs": lbfgs,
           "lbfgs-szegedy": _lbfgs_next_class}


def get_attack(name):
    """The attack called ``name``, or a clear error listing the known ones."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}: expected one of {', '.join(ATTACKS)}")
    return ATTACKS[name]


__all__ = ["ATTACKS", "PRESETS", "SURROGATES", "build_surrogate", "check_images",
           "eot_pgd", "expected_gradient", "fgsm", "get_attack", "input_gradient", "lbfgs",
           "lbfgs_targeted", "pgd", "preset", "register_surrogate"]
