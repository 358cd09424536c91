"""The paper's models, their noise variants, and the one registry of model families.

Variants (section 4): plain -- no noise; "+" -- fixed standard normal noise (``sigma = 1``, not
trained); "N" -- noise levels learned by Eq. (3) and (7). Every builder has the signature
``build(bk, variant, **options)``; :data:`FAMILIES` names them, their variants and datasets.
"""
from dataclasses import dataclass

from .datasets import get_dataset
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


def map_noise_for(bk, shape, mode, conv_mean, sigma0=1.0, eval_noise=None, **options):
    """:func:`noise_for` on a feature map ``(C, H, W)``; learned noise there also learns the mean
    ``mu`` when ``conv_mean`` (the paper's conv "bias", which then replaces the conv's own).
    Returns ``(noise, whether it learns mu)``."""
    learn_mean = mode == "learned" and conv_mean
    if learn_mean:
        options = dict(options, learn_mean=True)
    return noise_for(bk, shape, mode, sigma0, eval_noise, **options), learn_mean


def mlp(bk, variant="mlpn", activation="relu", sizes=MLP_SIZES, input_shape=None, noise_on_output=False,
        sigma0=1.0, eval_noise=None, **noise_options):
    """The paper's MLP (784-100-50-10 by default) as ``fc1, act1, fc2, act2, fc3``.

    ``variant``: ``"mlp"``, ``"mlp+"`` or ``"mlpn"``. Noise is added to the pre-activation of
    every hidden layer (and to the logits too if ``noise_on_output``). ``noise_options`` go to
    :class:`GaussianNoise` (``learn_mean``, ``abs_sigma``). ``input_shape``: the model takes
    images of this shape (e.g. ``(1, 28, 28)``) and a first layer ``flatten`` makes them rows of
    ``sizes[0]`` numbers; by default it takes the rows themselves.
    """
    if variant not in MLP_VARIANTS:
        raise ValueError(f"unknown MLP variant {variant!r}: expected one of {', '.join(MLP_VARIANTS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    mode = MLP_VARIANTS[variant]
    layers = []
    if input_shape is not None:
        from .layers import Flatten
        flatten = Flatten(bk)
        if flatten.output_shape(tuple(input_shape)) != (sizes[0],):
            raise ValueError(f"input_shape {tuple(input_shape)} does not flatten to the {sizes[0]} inputs of "
                             f"sizes {tuple(sizes)}")
        layers.append(("flatten", flatten))
    last = len(sizes) - 2
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        noisy = i < last or noise_on_output
        noise = noise_for(bk, (n_out,), mode if noisy else "off", sigma0, eval_noise, **noise_options)
        layers.append((f"fc{i + 1}", Linear(bk, n_in, n_out, noise=noise)))
        if i < last:
            layers.append((f"act{i + 1}", ACTIVATIONS[activation](bk)))
    return Sequential(bk, layers, input_shape=tuple(input_shape or (sizes[0],)))


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

    The paper orders each stage convolution (with its noise), ReLU, max-pool; the model pools
    first and applies the ReLU to a quarter of the numbers. The two orders are the same
    function with the same gradients: ``max`` of ``relu`` is ``relu`` of ``max`` (ReLU is
    non-decreasing), and in both a window's gradient reaches its first maximum when that maximum
    is positive and nothing otherwise, ties included (``tests/test_cnn.py`` checks it).
    """
    from .layers import Conv2d, Flatten, MaxPool2d, ReLU

    if variant not in CNN_VARIANTS:
        raise ValueError(f"unknown CNN variant {variant!r}: expected one of {', '.join(CNN_VARIANTS)}")
    conv_mode, fc_mode = CNN_VARIANTS[variant]
    layers, shape = [], tuple(input_shape)
    for i, out_channels in enumerate(channels, start=1):
        out_shape = (out_channels, *shape[1:])                  # 3x3, padding 1: same H x W
        noise, mean = map_noise_for(bk, out_shape, conv_mode, conv_mean, sigma0, eval_noise, **noise_options)
        conv = Conv2d(bk, shape[0], out_channels, 3, padding=1, bias=not mean, noise=noise)
        pool = MaxPool2d(bk, 2)
        layers += [(f"conv{i}", conv), (f"pool{i}", pool), (f"act{i}", ReLU(bk))]   # = conv, ReLU, pool
        shape = pool.output_shape(out_shape)
    flatten = Flatten(bk)
    (features,) = flatten.output_shape(shape)
    act = f"act{len(channels) + 1}"
    noise = noise_for(bk, (hidden,), fc_mode, sigma0, eval_noise, **noise_options)
    layers += [("flatten", flatten), ("fc1", Linear(bk, features, hidden, noise=noise)),
               (act, ReLU(bk)), ("fc2", Linear(bk, hidden, classes))]
    return Sequential(bk, layers, input_shape=tuple(input_shape))


# --- ResNet18 / ResNet34 (sections 4.3 and 4.4, Tables 5 and 6) --------------------------------
#: suffix -> (noise on the last convolution of each residual block, noise on the hidden FC layers)
RESNET_SUFFIXES = {"": ("off", "off"), "-mlp+": ("off", "fixed"), "-a+": ("fixed", "fixed"),
                   "-mlpn": ("off", "learned"), "-an": ("learned", "learned")}
RESNET18_VARIANTS = tuple("resnet18" + s for s in RESNET_SUFFIXES)
RESNET34_VARIANTS = tuple("resnet34" + s for s in RESNET_SUFFIXES)
#: the hidden FC sizes of the paper's head, per dataset (image size, classes and the per-channel
#: statistics of the first layer come from :data:`manualbp.datasets.DATASETS`)
RESNET_HEADS = {"cifar10": (256, 128), "tiny-imagenet": (1024, 512, 256)}


def resnet(bk, variant, blocks, dataset="cifar10", width=64, input_size=None, classes=None,
           hidden=None, stem_stride=None, activation="relu", sigma0=1.0, eval_noise=False, conv_mean=True,
           **noise_options):
    """A ResNet of :class:`~manualbp.layers.residual.BasicBlock` s for 32x32 or 64x64 images.

    Layers: ``normalize`` (fixed per-channel, so the model reads pixels in ``[0, 1]``) ->
    ``conv1`` (3x3, ``width`` channels, no bias) -> ``bn1`` -> ``act1`` -> ``layer1`` ..
    ``layer4`` (``blocks[i]`` blocks each, ``width * (1, 2, 4, 8)`` channels, the first block of
    layers 2-4 with stride 2 and a projection shortcut) -> ``pool`` (global average) -> head.

    Stem: 32x32 inputs keep the CIFAR stem (3x3, stride 1, no max-pool; the last maps are 4x4).
    64x64 inputs use the same 3x3 convolution with stride 2 and no max-pool, so the four stages
    see 32, 16, 8, 4 pixels as on CIFAR-10 (ImageNet's 7x7 stride-2 convolution and max-pool
    would leave 2x2 maps). ``stem_stride`` overrides the choice.

    Head: the paper replaces the last FC layer by FC layers of ``hidden`` sizes, each followed by
    ReLU, then the output layer: CIFAR-10 ``256 -> 128 -> 10``, Tiny-ImageNet
    ``1024 -> 512 -> 256 -> 200`` (``RESNET_HEADS``). ``hidden=()`` gives the original one-FC
    head (``fc``), the paper's black-box surrogate.

    ``variant`` ends with a suffix of ``RESNET_SUFFIXES``: ``-mlp+`` / ``-mlpn`` fixed / learned
    noise on the hidden FC pre-activations; ``-a+`` / ``-an`` also on ``conv2`` of every block,
    one ``sigma`` per element of its ``C x H x W`` map, with a learned mean ``mu`` for learned
    noise (``conv_mean``). ``eval_noise=False``: noise is off at evaluation, as the paper's code
    evaluates its ResNets (the runner reports both). ``width`` and ``input_size`` shrink the
    model for tests; ``activation`` is ReLU in the paper (a smooth one, e.g. ``"sigmoid"``, makes
    finite differences of the whole model exact).
    """
    from .layers import BasicBlock, BatchNorm2d, Conv2d, GlobalAvgPool2d, Normalize
    from .ops.im2col import output_size

    if dataset not in RESNET_HEADS:
        raise ValueError(f"no ResNet set-up for dataset {dataset!r}: expected one of {', '.join(RESNET_HEADS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
    act = ACTIVATIONS[activation]
    data = get_dataset(dataset)
    name = f"resnet{2 * sum(blocks) + 2}"
    suffix = variant[len(name):] if variant.startswith(name) else None
    if suffix not in RESNET_SUFFIXES:
        raise ValueError(f"unknown {name} variant {variant!r}: expected one of "
                         f"{', '.join(name + s for s in RESNET_SUFFIXES)}")
    conv_mode, fc_mode = RESNET_SUFFIXES[suffix]
    size = int(input_size or data.image_shape[1])
    classes = int(classes or data.classes)
    hidden = tuple(RESNET_HEADS[dataset] if hidden is None else hidden)
    if fc_mode != "off" and not hidden:
        raise ValueError(f"variant {variant!r} puts noise on hidden FC layers, but hidden=() has none")
    if stem_stride is None:
        stem_stride = 2 if size >= 64 else 1

    stem = Conv2d(bk, 3, width, 3, stride=stem_stride, padding=1, bias=False)
    shape = stem.output_shape((3, size, size))
    layers = [("normalize", Normalize(bk, data.mean, data.std)), ("conv1", stem),
              ("bn1", BatchNorm2d(bk, width)), ("act1", act(bk))]
    channels = width
    for stage, count in enumerate(blocks):
        out_channels = width * 2 ** stage
        stage_blocks = []
        for b in range(count):
            stride = 2 if stage > 0 and b == 0 else 1
            out_shape = (out_channels, output_size(shape[1], 3, stride, 1), output_size(shape[2], 3, stride, 1))
            noise, _ = map_noise_for(bk, out_shape, conv_mode, conv_mean, sigma0, eval_noise, **noise_options)
            block = BasicBlock(bk, channels, out_channels, stride, noise=noise, activation=activation)
            stage_blocks.append((str(b), block))
            channels, shape = out_channels, out_shape
        layers.append((f"layer{stage + 1}", Sequential(bk, stage_blocks)))
    layers.append(("pool", GlobalAvgPool2d(bk)))
    for i, n_out in enumerate(hidden):
        noise = noise_for(bk, (n_out,), fc_mode, sigma0, eval_noise, **noise_options)
        layers += [(f"fc{i + 1}", Linear(bk, channels, n_out, noise=noise)), (f"act_fc{i + 1}", act(bk))]
        channels = n_out
    layers.append((f"fc{len(hidden) + 1}" if hidden else "fc", Linear(bk, channels, classes)))
    return Sequential(bk, layers, input_shape=(3, size, size))


def resnet18(bk, variant="resnet18-an", dataset="cifar10", **options):
    """ResNet18 (``[2, 2, 2, 2]`` blocks), the paper's CIFAR-10 model; see :func:`resnet`."""
    return resnet(bk, variant, (2, 2, 2, 2), dataset, **options)


def resnet34(bk, variant="resnet34-an", dataset="tiny-imagenet", **options):
    """ResNet34 (``[3, 4, 6, 3]`` blocks), the paper's Tiny-ImageNet model; see :func:`resnet`."""
    return resnet(bk, variant, (3, 4, 6, 3), dataset, **options)


# --- the registry ------------------------------------------------------------------------------
def model_name(variant, activation=None):
    """A model's name: ``"<variant>-<activation>"`` (MLPs) or ``"<variant>"``; checkpoints are
    ``<name>.npz``."""
    return f"{variant}-{activation}" if activation else variant


@dataclass(frozen=True)
class Family:
    """A model family of the paper: its builder ``build(bk, variant, **options)``, variants (x
    activations), the datasets it is trained on, the builder options it takes from the dataset
    (``from_dataset``: ``"input_shape"``, ``"classes"``, ``"dataset"`` -- its name), its extra
    command-line options (``{name: (type, default, help)}``, passed to the builder) and its
    evaluation batch size."""
    name: str
    build: object
    variants: tuple
    datasets: tuple
    activations: tuple = (None,)
    from_dataset: tuple = ("input_shape", "classes")
    options: tuple = ()
    eval_batch_size: int = 1000

    def rows(self):
        """``[(row key, variant, activation)]``: keys ``"variant/activation"`` or ``"variant"``."""
        return [(f"{v}/{a}" if a else v, v, a) for v in self.variants for a in self.activations]

    def check_dataset(self, dataset):
        if dataset not in self.datasets:
            raise ValueError(f"family {self.name!r} is evaluated on {', '.join(self.datasets)}, not {dataset!r}")

    def model(self, bk, variant, activation=None, dataset=None, **options):
        """``build(bk, variant, **options)`` for images of ``dataset`` (default: the family's first)."""
        data = get_dataset(dataset or self.datasets[0])
        facts = {"input_shape": data.image_shape, "classes": data.classes, "dataset": data.name}
        for key in self.from_dataset:
            options.setdefault(key, facts[key])
        if activation is not None:
            options["activation"] = activation
        return self.build(bk, variant, **options)


_WIDTH = (("width", (int, 64, "channels of the first stage")),)

FAMILIES = {
    "mlp": Family("mlp", mlp, tuple(MLP_VARIANTS), ("mnist", "fashion-mnist"), ("relu", "sigmoid"),
                  from_dataset=("input_shape",)),            # its sizes fix the classes
    "cnn": Family("cnn", cnn, tuple(CNN_VARIANTS), ("mnist", "fashion-mnist")),
    "resnet18": Family("resnet18", resnet18, RESNET18_VARIANTS, ("cifar10",), from_dataset=("dataset",),
                       options=_WIDTH, eval_batch_size=250),
    "resnet34": Family("resnet34", resnet34, RESNET34_VARIANTS, ("tiny-imagenet",), from_dataset=("dataset",),
                       options=_WIDTH, eval_batch_size=250),
}


def get_family(name, dataset=None):
    """The :class:`Family` called ``name`` (checked to be trained on ``dataset`` when given)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: expected one of {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    if dataset is not None:
        family.check_dataset(dataset)
    return family
