"""``python -m manualbp.verify``: compare zoo models with PyTorch or JAX, one table per model.

    python -m manualbp.verify --against torch --model mlpn-relu --dtype float64

Exit status: 0 when every array of every model agrees, 1 when one does not, 2 when the check
cannot run (reference framework missing, a layer without a conversion rule).
"""
import argparse
import sys

from ..backend import get_backend
from ..checkpoint import write_json
from ..model import evaluating
from .compare import FRAMEWORKS, FrameworkMissing, verify_model
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
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--kernels", choices=["fast", "reference"], default="fast",
                        help="verify the fast kernels (default) or the reference layers")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=float, default=None, help="default: 1e-9 (float64), 1e-4 (float32)")
    parser.add_argument("--atol", type=float, default=None, help="default: 1e-13 (float64), 1e-7 (float32)")
    parser.add_argument("--resnet-width", type=int, default=64,
                        help="channels of the ResNets' first stage (64 in the paper)")
    parser.add_argument("--json", default=None, help="also write the reports to this file")
    args = parser.parse_args(argv)
    for flag, value, ok, expected in (("--batch", args.batch, args.batch >= 1, "at least 1"),
                                      ("--resnet-width", args.resnet_width, args.resnet_width >= 1, "at least 1"),
                                      ("--rtol", args.rtol, args.rtol is None or args.rtol >= 0, "a tolerance >= 0"),
                                      ("--atol", args.atol, args.atol is None or args.atol >= 0, "a tolerance >= 0")):
        if not ok:
            raise SystemExit(f"error: {flag} {value}: expected {expected}")
    return args


def main(argv=None):
    args = parse_args(argv, zoo_models())
    models = zoo_models(args.resnet_width)
    names = list(models) if args.model == "all" else [args.model]
    reports = []
    for name in names:
        bk = get_backend(args.backend, args.dtype, args.seed, args.kernels)
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
