"""The zoo's models by name, for the command line: every MLP variant with each activation, and
every CNN variant. A new family (ResNets) adds its builders here."""
from functools import partial

from .. import zoo


def zoo_models():
    """``{name: builder(bk) -> model}``: ``"mlp-relu"``, ``"mlpn-sigmoid"``, ``"cnn-an"``, ..."""
    models = {f"{variant}-{activation}": partial(zoo.mlp, variant=variant, activation=activation)
              for variant in zoo.MLP_VARIANTS for activation in ("relu", "sigmoid")}
    models.update({variant: partial(zoo.cnn, variant=variant) for variant in zoo.CNN_VARIANTS})
    return models
