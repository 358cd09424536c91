"""Table 2 of the paper as per-dataset attack presets, in pixel units (images in [0, 1]).

The paper's MNIST and Tiny-ImageNet code feeds raw pixels (``ToTensor`` only), so its numbers
are pixel units already. Its CIFAR-10 code normalises with per-channel std
``(0.2023, 0.1994, 0.2010)`` and applies the budgets to normalised tensors; a step of ``a`` there
is ``a * std`` in pixels, converted here with the mean std ``0.2009`` (docs/robustness.md).

Entries: ``fgsm`` (``eps``), ``pgd`` (``eps``, ``alpha``, ``steps``, ``random_start``),
``lbfgs`` (``max_iter``: the paper's iteration cap; its step size ``alpha`` was the learning rate
of ``torch.optim.LBFGS``, which L-BFGS-B's line search replaces), ``eot`` (``draws``) and
``sweep`` (the eps grid of the epsilon sweep).
"""
CIFAR_STD = (0.2023 + 0.1994 + 0.2010) / 3

_MNIST = {"fgsm": {"eps": 0.1},
          "lbfgs": {"max_iter": 10},
          "pgd": {"eps": 25 / 255, "alpha": 5 / 255, "steps": 10, "random_start": False},
          "eot": {"draws": 20},
          "sweep": (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)}

PRESETS = {
    "mnist": _MNIST,
    "fashion-mnist": _MNIST,
    "cifar10": {"fgsm": {"eps": 0.1 * CIFAR_STD},
                "lbfgs": {"max_iter": 20},
                "pgd": {"eps": 8 / 255 * CIFAR_STD, "alpha": 2 / 255 * CIFAR_STD, "steps": 5,
                        "random_start": False},
                "eot": {"draws": 20},
                "sweep": (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)},
    "tiny-imagenet": {"fgsm": {"eps": 2 / 255},
                      "lbfgs": {"max_iter": 10},
                      "pgd": {"eps": 5 / 255, "alpha": 2 / 255, "steps": 3, "random_start": False},
                      "eot": {"draws": 20},
                      "sweep": (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)},
}


def preset(dataset):
    """The Table 2 settings of ``dataset`` (a copy), or a clear error."""
    if dataset not in PRESETS:
        raise ValueError(f"no attack preset for dataset {dataset!r}: expected one of {', '.join(PRESETS)}")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[dataset].items()}
