"""Builders for the paper's models and their noise variants.

Variants (section 4): plain -- no noise; "+" -- fixed standard normal noise (``sigma = 1``, not
trained); "N" -- noise levels learned by Eq. (3) and (7).
"""
from .layers import ACTIVATIONS, GaussianNoise, Linear
from .model import Sequential

MLP_VARIANTS = {"mlp": "off", "mlp+": "fixed", "mlpn": "learned"}
MLP_SIZES = (784, 100, 50, 10)


def default_eval_noise(mode):
    """The paper's MNIST code keeps learned noise on at test time and turns fixed noise off."""
    return mode == "learned"


def noise_for(bk, shape, mode, sigma0=1.0, eval_noise=None, **options):
    """A :class:`GaussianNoise` for a layer of the given variant mode, or ``None`` for "off"."""
    if mode == "off":
        return None
    if eval_noise is None:
        eval_noise = default_eval_noise(mode)
    return GaussianNoise(bk, shape, mode=mode, sigma0=sigma0, eval_noise=eval_noise, **options)


def mlp(bk, variant="mlpn", activation="relu", sizes=MLP_SIZES, noise_on_output=False, sigma0=1.0,
        eval_noise=None, **noise_options):
    """The paper's MLP (784-100-50-10 by default) as ``fc1, act1, fc2, act2, fc3``.

    ``variant``: ``"mlp"``, ``"mlp+"`` or ``"mlpn"``. Noise is added to the pre-activation of
    every hidden layer (and to the logits too if ``noise_on_output``). ``noise_options`` go to
    :class:`GaussianNoise` (``learn_mean``, ``abs_sigma``).
    """
    if variant not in MLP_VARIANTS:
        raise ValueError(f"unknown MLP variant {variant!r}: expected one of {', '.join(MLP_VARIANTS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    mode = MLP_VARIANTS[variant]
    layers = []
    last = len(sizes) - 2
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        noisy = i < last or noise_on_output
        noise = noise_for(bk, (n_out,), mode if noisy else "off", sigma0, eval_noise, **noise_options)
        layers.append((f"fc{i + 1}", Linear(bk, n_in, n_out, noise=noise)))
        if i < last:
            layers.append((f"act{i + 1}", ACTIVATIONS[activation](bk)))
    return Sequential(bk, layers, input_shape=(sizes[0],))
