"""The zoo's models by name, for the command line: every MLP variant with each activation, every
CNN variant, and every ResNet18 (CIFAR-10) and ResNet34 (Tiny-ImageNet) variant."""
from functools import partial

from .. import zoo


def zoo_models(resnet_width=64):
    """``{name: builder(bk) -> model}``: ``"mlp-relu"``, ``"mlpn-sigmoid"``, ``"cnn-an"``,
    ``"resnet18-an"``, ... ``resnet_width``: channels of the ResNets' first stage (64 in the
    paper; fewer gives the same structure at a fraction of the cost)."""
    models = {f"{variant}-{activation}": partial(zoo.mlp, variant=variant, activation=activation)
              for variant in zoo.MLP_VARIANTS for activation in ("relu", "sigmoid")}
    models.update({variant: partial(zoo.cnn, variant=variant) for variant in zoo.CNN_VARIANTS})
    models.update({variant: partial(zoo.resnet18, variant=variant, width=resnet_width)
                   for variant in zoo.RESNET18_VARIANTS})
    models.update({variant: partial(zoo.resnet34, variant=variant, width=resnet_width)
                   for variant in zoo.RESNET34_VARIANTS})
    return models
