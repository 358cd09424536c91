"""The zoo's models by name, for the command line: every variant (x activation) of every family
of :data:`manualbp.zoo.FAMILIES`, each built for its family's first dataset."""
from functools import partial

from ..zoo import FAMILIES, model_name


def zoo_models(resnet_width=64):
    """``{name: builder(bk) -> model}``: ``"mlp-relu"``, ``"mlpn-sigmoid"``, ``"cnn-an"``,
    ``"resnet18-an"``, ... ``resnet_width``: channels of the ResNets' first stage (64 in the
    paper; fewer gives the same structure at a fraction of the cost)."""
    models = {}
    for family in FAMILIES.values():
        options = {"width": resnet_width} if "width" in dict(family.options) else {}
        for _, variant, activation in family.rows():
            models[model_name(variant, activation)] = partial(family.model, variant=variant,
                                                              activation=activation, **options)
    return models
