"""The paper's datasets, one entry each: everything the scripts, the evaluation and the
benchmarks need to know about a dataset is here and nowhere else (what a model built for it
looks like, e.g. the ResNet heads, is in :mod:`manualbp.zoo`).

Each :class:`Dataset` holds the image shape and classes, the paper's split of all labelled
images into train / validation / test (sections 4.2-4.4), the Table 1 training set-up, the
Table 2 attack settings in pixel units, the corruption constants it is evaluated with, its
black-box surrogate and the per-channel statistics a ResNet normalises with.

Attack settings are pixel units (images in [0, 1]). The paper's MNIST and Tiny-ImageNet code
feeds raw pixels (``ToTensor`` only), so its numbers are pixel units already. Its CIFAR-10 code
normalises with per-channel std ``(0.2023, 0.1994, 0.2010)`` and applies the budgets to
normalised tensors; a step of ``a`` there is ``a * std`` in pixels, converted here with the mean
std ``0.2009`` (docs/robustness.md). Attack entries: ``fgsm`` (``budget``), ``pgd``
(``budget``, ``alpha``, ``steps``, ``random_start``), ``lbfgs`` (``max_iter``: the paper's
iteration cap; its step size was the learning rate of ``torch.optim.LBFGS``, which L-BFGS-B's
line search replaces) and ``sweep`` (the budgets of the budget sweep); EOT-PGD takes PGD's with
its own number of draws (``--eot-draws``).
"""
from dataclasses import dataclass, field
from functools import partial

from .data import cifar10, load_cifar10, load_mnist, load_tiny_imagenet, mnist, split_dataset

#: The mean per-channel std of the paper's CIFAR-10 normalisation (its budgets are in those units).
CIFAR_STD = (0.2023 + 0.1994 + 0.2010) / 3

_MNIST_TRAINING = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 30, "batch_size": 128}
_MNIST_ATTACKS = {"fgsm": {"budget": 0.1},
                  "lbfgs": {"max_iter": 10},
                  "pgd": {"budget": 25 / 255, "alpha": 5 / 255, "steps": 10, "random_start": False},
                  "sweep": (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)}
_MNIST_SURROGATE = ("mlp", "mlp", {"activation": "relu", "sizes": (784, 300, 150, 10)})
_MNIST_SURROGATE_NAME = f"MLP {'-'.join(map(str, _MNIST_SURROGATE[2]['sizes']))} ReLU"


@dataclass(frozen=True)
class Dataset:
    """One dataset of the paper.

    ``split``: train : validation : test ratio of all labelled images. ``training``: Table 1
    (optimiser, learning rate, L2 weight decay, epochs, batch size, lr decay). ``attacks``:
    Table 2 in pixel units. ``corruptions``: the table of constants in
    :data:`manualbp.corruptions.CONSTANTS`. ``surrogate``: ``(family, variant, options)`` of the
    black-box surrogate in :data:`manualbp.zoo.FAMILIES`, ``surrogate_training`` where the
    released code trains it otherwise than Table 1. ``mean`` / ``std``: per-channel statistics
    of the official training images (ResNets normalise with them). ``augment``: random crops and
    flips in training (the paper's ResNets)."""
    name: str
    image_shape: tuple
    classes: int
    split: tuple
    training: dict
    attacks: dict
    corruptions: str
    surrogate: tuple
    surrogate_description: str
    load: object = field(repr=False)
    class_names: tuple = None
    surrogate_training: dict = field(default_factory=dict)
    mean: tuple = None
    std: tuple = None
    augment: bool = False


DATASETS = {
    "mnist": Dataset("mnist", (1, 28, 28), 10, (5, 1, 1), _MNIST_TRAINING, _MNIST_ATTACKS, "cifar10-c",
                     _MNIST_SURROGATE, _MNIST_SURROGATE_NAME, partial(load_mnist, "mnist"),
                     class_names=mnist.CLASSES["mnist"]),
    "fashion-mnist": Dataset("fashion-mnist", (1, 28, 28), 10, (5, 1, 1), _MNIST_TRAINING, _MNIST_ATTACKS,
                             "cifar10-c", _MNIST_SURROGATE, _MNIST_SURROGATE_NAME,
                             partial(load_mnist, "fashion-mnist"), class_names=mnist.CLASSES["fashion-mnist"]),
    "cifar10": Dataset(
        "cifar10", (3, 32, 32), 10, (4, 1, 1),
        {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 50, "batch_size": 128},
        {"fgsm": {"budget": 0.1 * CIFAR_STD},
         "lbfgs": {"max_iter": 20},
         "pgd": {"budget": 8 / 255 * CIFAR_STD, "alpha": 2 / 255 * CIFAR_STD, "steps": 5, "random_start": False},
         "sweep": (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)},
        "cifar10-c", ("resnet18", "resnet18", {"hidden": ()}), "plain ResNet18, one FC layer", load_cifar10,
        class_names=cifar10.CLASSES,
        surrogate_training={"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4,
                            "epochs": 30, "decay_every": None, "decay_gamma": 1.0},
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), augment=True),
    "tiny-imagenet": Dataset(
        "tiny-imagenet", (3, 64, 64), 200, (10, 1, 1),
        {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 5e-4, "epochs": 80, "batch_size": 128,
         "decay_every": 20, "decay_gamma": 0.8},
        {"fgsm": {"budget": 2 / 255},
         "lbfgs": {"max_iter": 10},
         "pgd": {"budget": 5 / 255, "alpha": 2 / 255, "steps": 3, "random_start": False},
         "sweep": (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255, 32 / 255, 64 / 255)},
        "tiny-imagenet-c", ("resnet34", "resnet34", {"hidden": ()}), "plain ResNet34, one FC layer",
        load_tiny_imagenet, mean=(0.4802, 0.4481, 0.3975), std=(0.2770, 0.2691, 0.2821), augment=True),
}


def get_dataset(name):
    """The :class:`Dataset` called ``name``, or a clear error naming the known ones."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def pixels(bk, images):
    """uint8 images (as every loader returns them) as backend pixels in ``[0, 1]``: moved as
    bytes, then cast on the device."""
    if images.dtype != "uint8":
        raise TypeError(f"expected uint8 images as the loaders return them, got {images.dtype}")
    out = bk.asarray(images, dtype="uint8").astype(bk.dtype)
    out /= 255
    return out


def load_splits(bk, dataset, data_dir=None, seed=0, limit_train=None, limit_eval=None):
    """All labelled images of ``dataset`` split as in the paper, moved to the backend one split
    at a time: ``{"train": (x, y), "val": ..., "test": ...}``, images ``(N, C, H, W)`` in
    ``[0, 1]``, int64 labels. Quick runs: ``limit_train`` keeps the first images of the training
    split, ``limit_eval`` of the (shuffled) validation and test splits."""
    data = get_dataset(dataset)
    splits = split_dataset(data.load(data_dir=data_dir), data.split, seed=seed)
    limits = {"train": limit_train, "val": limit_eval, "test": limit_eval}
    return {name: (pixels(bk, x[:limits[name]]), bk.asarray(y[:limits[name]], dtype="int64"))
            for name, (x, y) in splits.items()}
