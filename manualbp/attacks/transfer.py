"""Black-box transfer attacks: adversarial examples crafted once on a surrogate model that the
attacker trains itself, then replayed on every target (sections 4.2-4.4).

Surrogates by dataset (the paper's choices): MNIST-size inputs -- an MLP 784-300-150-10 with
ReLU (section 4.2); CIFAR-10 / Tiny-ImageNet -- the plain ResNet18 / ResNet34 with the original
one-FC head (sections 4.3, 4.4). ``SURROGATE_TRAINING`` holds how the paper's code trained a
surrogate where that differs from the targets' Table 1 set-up.
"""
from .. import zoo

SURROGATE_SIZES = (784, 300, 150, 10)


def mnist_surrogate(bk):
    """The MNIST-family surrogate: MLP 784-300-150-10, ReLU, no noise."""
    return zoo.mlp(bk, "mlp", "relu", sizes=SURROGATE_SIZES)


def cifar10_surrogate(bk):
    """The CIFAR-10 surrogate: plain ResNet18 with one FC layer."""
    return zoo.resnet18(bk, "resnet18", "cifar10", hidden=())


def tiny_imagenet_surrogate(bk):
    """The Tiny-ImageNet surrogate: plain ResNet34 with one FC layer."""
    return zoo.resnet34(bk, "resnet34", "tiny-imagenet", hidden=())


SURROGATES = {"mnist": mnist_surrogate, "fashion-mnist": mnist_surrogate,
              "cifar10": cifar10_surrogate, "tiny-imagenet": tiny_imagenet_surrogate}
#: the released code's surrogate training where it differs from Table 1 (CIFAR-10: SGD, 30 epochs)
SURROGATE_TRAINING = {"cifar10": {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4,
                                  "epochs": 30, "decay_every": None, "decay_gamma": 1.0}}


def register_surrogate(dataset, builder):
    """Make ``builder(bk) -> model`` the surrogate for ``dataset``."""
    SURROGATES[dataset] = builder


def build_surrogate(bk, dataset):
    """A fresh, untrained surrogate for ``dataset``; a clear error when none is registered."""
    if dataset not in SURROGATES:
        raise ValueError(f"no black-box surrogate for dataset {dataset!r}: expected one of "
                         f"{', '.join(SURROGATES)} (add one with manualbp.attacks.register_surrogate)")
    return SURROGATES[dataset](bk)
