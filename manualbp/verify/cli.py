"""``python -m manualbp.verify``: compare zoo models with PyTorch or JAX, or your own PyTorch
model with its manualbp import, one table per model.

    python -m manualbp.verify --against torch --model mlpn-relu --dtype float64
    python -m manualbp.verify --torch-model mypackage.models:make_net --input-shape 3 32 32 --train
    python -m manualbp.verify --torchvision resnet50 --num-classes 10 --input-shape 3 32 32 --train

Exit status: 0 when every array of every model agrees, 1 when one does not, 2 when the check
cannot run (reference framework missing, a layer without a conversion rule, a backend this
machine lacks, a bad ``MANUALBP_NUM_THREADS``).
"""
import argparse
import ast
import importlib
import sys

from ..backend import BACKENDS, DTYPES, KERNELS, BackendError, get_backend
from ..checkpoint import write_json
from ..model import evaluating
from ..parallel import ThreadCountError, num_threads
from .compare import FRAMEWORKS, TOLERANCES, FrameworkMissing, verify_model
from .models import zoo_models
from .walk import ConversionError


def random_batch(model, batch, seed):
    """A batch of uniform [0, 1) inputs of the model's input shape and random labels."""
    bk = model.bk
    bk.seed(seed)
    x = bk.uniform(0, 1, (batch,) + model.input_shape)
    with evaluating(model, noise=False):                   # leaves running statistics alone
        classes = model.forward(x).shape[1]
    return x, (bk.uniform(0, classes, (batch,)) // 1).astype("int64")


def parse_args(argv, models):
    parser = argparse.ArgumentParser(prog="python -m manualbp.verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", choices=list(FRAMEWORKS), default="torch")
    parser.add_argument("--model", choices=list(models) + ["all"], default="all")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float64")
    parser.add_argument("--backend", choices=list(BACKENDS), default="numpy")
    parser.add_argument("--kernels", choices=list(KERNELS), default="fast",
                        help="verify the fast kernels (default) or the reference layers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    for i, flag in enumerate(("--rtol", "--atol")):
        parser.add_argument(flag, type=float, default=None, help="default: " + ", ".join(
            f"{tolerance[i]:.0e} ({dtype})".replace("e-0", "e-") for dtype, tolerance in TOLERANCES.items()))
    parser.add_argument("--resnet-width", type=int, default=64,
                        help="channels of the ResNets' first stage (64 in the paper)")
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    parser.add_argument("--torch-model", default=None, metavar="PACKAGE.MODULE:FACTORY",
                        help="compare the torch.nn.Module that FACTORY() returns with its manualbp import")
    parser.add_argument("--torchvision", default=None, metavar="NAME",
                        help="compare torchvision's model NAME (a builder such as resnet50, or a class such as "
                             "VisionTransformer; random weights) with its manualbp import")
    parser.add_argument("--num-classes", type=int, default=10, help="with --torchvision: its number of classes")
    parser.add_argument("--model-arg", nargs="+", default=[], metavar="KEY=VALUE",
                        help="with --torchvision: more arguments of the builder, e.g. aux_logits=False")
    parser.add_argument("--input-shape", type=int, nargs="+", default=None,
                        help="with --torch-model or --torchvision: the shape of one input, e.g. 3 32 32")
    parser.add_argument("--train", action="store_true",
                        help="with --torch-model or --torchvision: compare in training mode")
    args = parser.parse_args(argv)
    if args.torch_model is not None and args.torchvision is not None:
        raise SystemExit("error: --torch-model and --torchvision: expected one of them")
    if args.torch_model is not None and ":" not in args.torch_model:
        raise SystemExit(f"error: --torch-model {args.torch_model}: expected package.module:factory")
    if args.torch_model is not None or args.torchvision is not None:
        flag = "--torch-model" if args.torch_model is not None else "--torchvision"
        if not args.input_shape or min(args.input_shape) < 1:
            raise SystemExit(f"error: {flag} needs --input-shape, positive sizes of one input")
    args.model_options = {}
    for item in args.model_arg:
        key, _, text = item.partition("=")
        try:
            args.model_options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SystemExit(f"error: --model-arg {item}: expected KEY=VALUE with a Python literal value") from None
        if not key.isidentifier():
            raise SystemExit(f"error: --model-arg {item}: expected KEY=VALUE with KEY a name")
    for flag, value, ok, expected in (("--batch", args.batch, args.batch >= 1, "at least 1"),
                                      ("--num-classes", args.num_classes, args.num_classes >= 1, "at least 1"),
                                      ("--resnet-width", args.resnet_width, args.resnet_width >= 1, "at least 1"),
                                      ("--rtol", args.rtol, args.rtol is None or args.rtol >= 0, "a tolerance >= 0"),
                                      ("--atol", args.atol, args.atol is None or args.atol >= 0, "a tolerance >= 0")):
        if not ok:
            raise SystemExit(f"error: {flag} {value}: expected {expected}")
    return args


def build_module(args):
    """The torch module ``--torch-model`` or ``--torchvision`` names, in the mode asked for."""
    if args.torchvision is not None:
        from .torchvision_zoo import build
        module = build(args.torchvision, args.num_classes, **args.model_options)
    else:
        module_name, factory = args.torch_model.split(":", 1)
        module = getattr(importlib.import_module(module_name), factory)()
    return module.train(args.train)


def torch_model_main(args):
    """``--torch-model`` / ``--torchvision``: build the module, compare it with its import (by
    PyTorch's autograd, or ``--against jax``: JAX's on the same imported graph), print the report."""
    import torch

    from .torch_import import compare_torch, from_torch
    torch.manual_seed(args.seed)                   # the random weights: the same on every run
    try:
        module = build_module(args)
    except (ValueError, TypeError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.rand((args.batch, *args.input_shape), generator=generator, dtype=getattr(torch, args.dtype))
    classes = args.num_classes
    if args.torchvision is None:                   # a factory's module: as many classes as it outputs
        with torch.no_grad():
            classes = module.eval()(x.to(next(module.parameters()).dtype)).shape[1]
        module.train(args.train)
    y = torch.randint(0, classes, (args.batch,), generator=generator)
    try:
        if args.against == "torch":
            report = compare_torch(module, x, y, args.dtype, args.rtol, args.atol, args.kernels)
        else:
            bk = get_backend("numpy", args.dtype, args.seed, args.kernels)
            model = from_torch(module.to(getattr(torch, args.dtype)), tuple(args.input_shape), bk, args.batch)
            report = verify_model(model, bk.asarray(x.numpy()), bk.asarray(y.numpy(), dtype="int64"), "jax",
                                  args.rtol, args.atol)
            report.title = (f"{args.torchvision or args.torch_model}: manualbp ({args.kernels} kernels) vs "
                            f"{report.against} autograd on its import ({args.dtype}, "
                            f"{'training' if args.train else 'evaluation'} mode, batch {args.batch})")
    except (ConversionError, FrameworkMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(report.format())
    if args.json:
        write_json(args.json, [report.to_dict()])
    return 0 if report.passed else 1


def main(argv=None):
    args = parse_args(argv, zoo_models())
    try:
        num_threads()                  # read at the threads' first use: refused here, before any work
    except ThreadCountError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.torch_model is not None or args.torchvision is not None:
        return torch_model_main(args)
    models = zoo_models(args.resnet_width)
    names = list(models) if args.model == "all" else [args.model]
    reports = []
    for name in names:
        try:
            bk = get_backend(args.backend, args.dtype, args.seed, args.kernels)
        except BackendError as err:        # the first model's: before anything is printed or written
            print(f"error: {err}", file=sys.stderr)
            return 2
        model = models[name](bk)
        x, y = random_batch(model, args.batch, args.seed)
        bk.seed(args.seed)
        try:
            report = verify_model(model, x, y, args.against, args.rtol, args.atol)
        except (FrameworkMissing, ConversionError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        report.title = (f"{name}: manualbp ({args.kernels} kernels) vs {report.against} ({args.dtype}, batch {args.batch}, "
                        f"seed {args.seed}, rtol {report.rtol:g}, atol {report.atol:g})")
        print(report.format(), end="\n\n")
        reports.append(report)
    if args.json:
        write_json(args.json, [r.to_dict() for r in reports])
    failed = [name for name, r in zip(names, reports) if not r.passed]
    print(f"{len(reports) - len(failed)} of {len(reports)} models agree"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0
