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


# --- the MNIST CNN (section 4.2, Table 4) ------------------------------------------------------
#: variant -> (noise on the convolution feature maps, noise on the hidden fully connected layer)
CNN_VARIANTS = {"cnn": ("off", "off"), "cnn-mlp+": ("off", "fixed"), "cnn-a+": ("fixed", "fixed"),
                "cnn-mlpn": ("off", "learned"), "cnn-an": ("learned", "learned")}


def cnn(bk, variant="cnn-an", input_shape=(1, 28, 28), channels=(32, 64), hidden=128, classes=10,
        sigma0=1.0, eval_noise=None, conv_mean=True, **noise_options):
    """The paper's MNIST CNN: ``conv1`` (3x3, 32, padding 1) -> ReLU -> 2x2 max-pool ->
    ``conv2`` (3x3, 64, padding 1) -> ReLU -> 2x2 max-pool -> flatten -> ``fc1`` (128) -> ReLU ->
    ``fc2`` (10). The flattened size comes from the shapes: ``64 * 7 * 7 = 3136`` for 28x28
    inputs (the paper's released code declares 1152, which does not fit).

    ``variant`` (Table 4): ``"cnn"`` no noise; ``"cnn-mlp+"`` fixed N(0, 1) noise on the hidden
    fully connected layer; ``"cnn-a+"`` also on both convolution feature maps; ``"cnn-mlpn"``
    learned noise on the hidden fully connected layer; ``"cnn-an"`` learned noise on both feature
    maps and the hidden fully connected layer. As in :func:`mlp`, noise goes on hidden
    pre-activations, never on the logits.

    On a feature map the noise has one ``sigma`` per element of the ``C x H x W`` map (Fig. 1).
    With learned noise and ``conv_mean`` (default) it also has one learned mean ``mu`` per
    element, which the paper reads as the bias of Eq. (1): the convolution then has no bias of
    its own (a per-channel bias is the special case of ``mu`` constant over ``H x W``, so keeping
    both would only duplicate parameters). Fixed noise (the "+" variants) has no mean: those
    convolutions keep their bias. ``noise_options`` (``abs_sigma``, ``learn_mean`` for the dense
    layer) go to every :class:`GaussianNoise`.
    """
    from .layers import Conv2d, Flatten, MaxPool2d, ReLU

    if variant not in CNN_VARIANTS:
        raise ValueError(f"unknown CNN variant {variant!r}: expected one of {', '.join(CNN_VARIANTS)}")
    conv_mode, fc_mode = CNN_VARIANTS[variant]
    layers, shape = [], tuple(input_shape)
    for i, out_channels in enumerate(channels, start=1):
        out_shape = (out_channels, *shape[1:])                  # 3x3, padding 1: same H x W
        mean = conv_mode == "learned" and conv_mean
        options = dict(noise_options, learn_mean=True) if mean else noise_options
        noise = noise_for(bk, out_shape, conv_mode, sigma0, eval_noise, **options)
        conv = Conv2d(bk, shape[0], out_channels, 3, padding=1, bias=not mean, noise=noise)
        pool = MaxPool2d(bk, 2)
        layers += [(f"conv{i}", conv), (f"act{i}", ReLU(bk)), (f"pool{i}", pool)]
        shape = pool.output_shape(out_shape)
    flatten = Flatten(bk)
    (features,) = flatten.output_shape(shape)
    act = f"act{len(channels) + 1}"
    noise = noise_for(bk, (hidden,), fc_mode, sigma0, eval_noise, **noise_options)
    layers += [("flatten", flatten), ("fc1", Linear(bk, features, hidden, noise=noise)),
               (act, ReLU(bk)), ("fc2", Linear(bk, hidden, classes))]
    return Sequential(bk, layers, input_shape=input_shape)
