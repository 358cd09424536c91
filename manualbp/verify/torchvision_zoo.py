"""torchvision's classification models, for ``python -m manualbp.verify --torchvision NAME``.

torchvision's PyPI wheel is built for PyTorch's CUDA build: beside the CPU build its compiled
operators (``nms``, ``roi_align``, ...) do not load, and ``import torchvision`` then fails where
it registers fake kernels for two of them. The classification models are pure Python and never
call those operators, so :func:`models` declares the two operators' schemas (nothing runs them)
when the compiled library cannot be loaded, and imports ``torchvision.models``. This module is
the one place that knows.
"""
import importlib
import importlib.util
from pathlib import Path

#: torchvision's classifiers verified by the tests and examples/verify_torchvision.py: name ->
#: (builder arguments, the shape of one input: each at a small input it allows)
CLASSIFIERS = {
    "resnet18": ({}, (3, 32, 32)), "resnet34": ({}, (3, 32, 32)), "resnet50": ({}, (3, 32, 32)),
    "resnext50_32x4d": ({}, (3, 32, 32)), "wide_resnet50_2": ({}, (3, 32, 32)),
    "vgg11": ({}, (3, 32, 32)), "vgg11_bn": ({}, (3, 32, 32)), "alexnet": ({}, (3, 64, 64)),
    "squeezenet1_1": ({}, (3, 32, 32)), "mobilenet_v2": ({}, (3, 32, 32)),
    "mobilenet_v3_small": ({}, (3, 32, 32)), "shufflenet_v2_x0_5": ({}, (3, 32, 32)),
    "densenet121": ({}, (3, 32, 32)), "googlenet": ({"aux_logits": False, "init_weights": False}, (3, 32, 32)),
    "efficientnet_b0": ({}, (3, 32, 32)), "regnet_x_400mf": ({}, (3, 32, 32)),
    "convnext_tiny": ({}, (3, 32, 32)), "mnasnet0_5": ({}, (3, 32, 32)), "swin_t": ({}, (3, 32, 32)),
    "VisionTransformer": ({"image_size": 32, "patch_size": 8, "num_layers": 2, "num_heads": 2, "hidden_dim": 32,
                           "mlp_dim": 64}, (3, 32, 32)),
}
#: the schemas of the operators whose fake kernels ``import torchvision`` registers
REGISTERED_ON_IMPORT = {"nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                        "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"}


def models():
    """``torchvision.models``; a clear ImportError when torchvision is not installed."""
    import torch
    spec = importlib.util.find_spec("torchvision")
    if spec is None:
        raise ImportError("torchvision is not installed; install the build for torch 2.13 without "
                          "letting it replace torch: pip install --no-deps torchvision==0.28.0")
    if not hasattr(torch.ops.torchvision, "nms"):
        library = next(Path(spec.submodule_search_locations[0]).glob("_C*.so"), None)
        try:
            torch.ops.load_library(str(library))
        except (OSError, RuntimeError, TypeError):
            for name, schema in REGISTERED_ON_IMPORT.items():
                torch.library.define(f"torchvision::{name}", schema)
    return importlib.import_module("torchvision.models")


def build(name, num_classes=10, **options):
    """torchvision's model ``name`` -- a builder (``"resnet18"``) or a class
    (``"VisionTransformer"``) of ``torchvision.models`` -- with ``num_classes`` outputs and
    random weights, in float64 and evaluation mode."""
    namespace = models()
    factory = getattr(namespace, name, None)
    if not callable(factory) or name.startswith("_"):
        known = sorted(namespace.list_models(module=namespace))
        raise ValueError(f"--torchvision {name}: not a model of torchvision.models; its classifiers are "
                         f"{', '.join(known)} (or a class such as VisionTransformer)")
    return factory(num_classes=num_classes, **options).double().eval()
