"""Black-box transfer attacks: adversarial examples crafted once on a surrogate model that the
attacker trains itself, then replayed on every target (sections 4.2-4.4).

Each dataset names its surrogate (:attr:`manualbp.datasets.Dataset.surrogate`, the paper's
choices): MNIST-size inputs -- an MLP 784-300-150-10 with ReLU (section 4.2); CIFAR-10 /
Tiny-ImageNet -- the plain ResNet18 / ResNet34 with the original one-FC head (sections 4.3,
4.4), built from the model registry like every other model.
"""
from ..datasets import get_dataset
from ..zoo import get_family


def surrogate_builder(dataset):
    """``build(bk, **options) -> model``: the untrained black-box surrogate of ``dataset``."""
    data = get_dataset(dataset)
    family, variant, options = data.surrogate
    return lambda bk, **more: get_family(family).model(bk, variant, dataset=dataset, **options, **more)


def surrogate_training(dataset):
    """How the surrogate of ``dataset`` is trained: Table 1, changed where the released code
    trains it otherwise (CIFAR-10: SGD, 30 epochs)."""
    data = get_dataset(dataset)
    return {**data.training, **data.surrogate_training}
