"""Theorem 2 made visible: the pathwise estimate of Eq. (3) is unbiased for d E[L] / d sigma.

    python examples/unbiasedness.py --out runs/unbiasedness

On a small MLPN (8-6-4-3, four samples, noise levels drawn per neuron; --family cnn: a small CNN-AN
with noise on every feature-map element) every d E[L] / d sigma_i is estimated three ways over independent noise draws: central finite differences with common
random numbers, the mean of the pathwise estimates delta * eps (Eq. 3), and the likelihood-ratio
estimator L (eps^2 - 1) / sigma. Writes OUT/unbiasedness.md (table), OUT/unbiasedness.json and
OUT/unbiasedness.png (means with confidence intervals; variance per draw).
"""
import argparse
import os

from manualbp import experiments, get_backend
from manualbp.checkpoint import write_json, write_text
from manualbp.estimators import compare_estimators, small_problem
from manualbp.plots import estimator_comparison


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=experiments.HELP_FORMAT)
    p.add_argument("--out", default="runs/unbiasedness", help="folder of the table, JSON and figure")
    p.add_argument("--draws", type=int, default=100000, help="noise draws per estimator")
    p.add_argument("--group-size", type=int, default=1000, help="draws per forward pass")
    p.add_argument("--family", choices=["mlp", "cnn"], default="mlp",
                   help="mlp: an MLPN of --sizes; cnn: a small CNN-AN (noise on feature maps)")
    p.add_argument("--sizes", default="8,6,4,3", help="layer sizes of the MLPN")
    p.add_argument("--activation", choices=["relu", "sigmoid"], default="relu", help="MLP only")
    p.add_argument("--samples", type=int, default=4, help="inputs in the batch")
    p.add_argument("--h", type=float, default=1e-3, help="finite-difference step")
    p.add_argument("--level", type=float, default=0.99, help="confidence level")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise levels and the draws")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    experiments.add_backend_arguments(p)
    args = p.parse_args(argv)
    check(args)
    return args


def check(args):
    """Refuse bad flags before any work (one line each, see :func:`manualbp.experiments.cli`)."""
    require = experiments.require
    experiments.check_at_least_one(args, "draws", "group_size", "samples")
    require(args, args.seed >= 0, "seed", "a non-negative integer")
    require(args, experiments.finite(args.h) and args.h > 0, "h", "a positive finite number")
    require(args, experiments.finite(args.level) and 0 < args.level < 1, "level", "a number in (0, 1)")
    sizes = args.sizes.split(",")
    require(args, len(sizes) >= 2 and all(s.strip().isdigit() and int(s) >= 1 for s in sizes), "sizes",
            "two or more positive integers separated by commas, e.g. 8,6,4,3")
    experiments.check_distributed(args)
    experiments.check_out(args)


def markdown(result, args):
    level = f"{result['level']:.0%}"
    model = f"an MLPN {args.sizes} ({args.activation})" if args.family == "mlp" else "a 1x4x4 CNN-AN"
    lines = [f"d E[L] / d sigma on {model}, {args.samples} samples, "
             f"{args.draws} draws per estimator; mean +- {level} interval; z = (estimate - FD) / "
             "combined standard error.", "",
             "| sigma | value | finite diff. (CRN) | pathwise, Eq. (3) | z | likelihood ratio | z "
             "| Var pathwise | Var LR | Var LR / Var pathwise |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        fd, pw, lr = r["finite_difference"], r["pathwise"], r["likelihood_ratio"]
        lines.append(f"| {r['name']} | {r['sigma']:.3f} | {fd['mean']:+.5f} +- {fd['half_width']:.5f} "
                     f"| {pw['mean']:+.5f} +- {pw['half_width']:.5f} | {pw['z']:+.2f} "
                     f"| {lr['mean']:+.5f} +- {lr['half_width']:.5f} | {lr['z']:+.2f} "
                     f"| {pw['variance']:.3g} | {lr['variance']:.3g} | {lr['variance'] / pw['variance']:.0f} |")
    agree = sum(r["pathwise"]["agrees"] for r in result["rows"])
    lines += ["", f"Pathwise mean inside the {level} interval of the finite differences: "
              f"{agree} of {len(result['rows'])} noise levels."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    bk = get_backend(args.backend, "float64", args.seed, args.kernels)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    model, x, y = small_problem(bk, args.family, sizes, args.activation, args.samples)
    result = compare_estimators(model, x, y, args.draws, args.group_size, args.h, args.seed, args.level)
    table = markdown(result, args)
    write_text(os.path.join(args.out, "unbiasedness.md"), table)
    write_json(os.path.join(args.out, "unbiasedness.json"),
               {"settings": vars(args), "level": result["level"], "rows": result["rows"],
                "estimates": {m: e.to_dict(args.level) for m, e in result["estimates"].items()}})
    estimator_comparison(list(result["estimates"].values()), os.path.join(args.out, "unbiasedness.png"),
                         args.level)
    print(table)
    return result


if __name__ == "__main__":
    experiments.cli(main)
