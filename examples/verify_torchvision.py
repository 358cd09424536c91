"""Verify torchvision's classifiers: each traced into manualbp and every gradient compared with
PyTorch's autograd (float64), in training and evaluation mode; the table of
docs/verifying_pytorch.md.

    python examples/verify_torchvision.py --out runs/torchvision [--models resnet18 swin_t] [--batch 2]

Writes ``torchvision.json`` (every report) and ``torchvision.md`` (one row per model and mode:
the ops its graph runs, the arrays compared, the worst relative error, seconds) atomically to
``--out``; exits 0 when every model agrees, 1 when one does not, 2 on bad input.
"""
import argparse
import sys
import time
from collections import Counter
from pathlib import Path

from manualbp.verify.torchvision_zoo import CLASSIFIERS as MODELS

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for torchvision.json and torchvision.md")
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="NAME",
                        help=f"default: all {len(MODELS)}")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"--models {' '.join(unknown)}: expected names from {', '.join(MODELS)}")
    if args.batch < 2:
        parser.error(f"--batch {args.batch}: expected at least 2 (batch norm in training mode)")
    return args


def verify(name, mode, batch, seed):
    """``(report, op counts, seconds)`` of one model in one mode."""
    import torch

    from manualbp.verify.torch_import import compare_torch, from_torch
    from manualbp.verify.torchvision_zoo import build
    options, shape = MODELS[name]
    torch.manual_seed(seed)
    module = build(name, 10, **options).train(mode == "train")
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.rand((batch, *shape), generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (batch,), generator=gen)
    start = time.perf_counter()
    report = compare_torch(module, x, y)
    seconds = time.perf_counter() - start
    ops = Counter(m.op.name for _, m in from_torch(module, shape, batch=batch).modules() if m.op is not None)
    return report, ops, seconds


def main(argv=None):
    args = parse_args(argv)
    from manualbp.checkpoint import write_json, write_text
    rows, reports = [], []
    for name in args.models:
        for mode in ("train", "eval"):
            report, ops, seconds = verify(name, mode, args.batch, args.seed)
            worst = max(report.rows, key=lambda r: r.max_rel if not r.near_zero else 0)
            conditioned = [r.name for r in report.rows if r.reason]
            rows.append(f"| {name} | {mode} | {'pass' if report.passed else 'FAIL'} | {len(report.rows)} | "
                        f"{worst.max_rel:.1e} ({worst.name}) | {len(conditioned)} | {seconds:.1f} | "
                        f"{', '.join(sorted(ops))} |")
            reports.append({"model": name, "mode": mode, "seconds": seconds, "ops": dict(ops), **report.to_dict()})
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = ("| model | mode | verdict | arrays | worst relative error | passed only within round-off or PyTorch's own "
              "error | seconds | ops |\n"
              "|---|---|---|---|---|---|---|---|\n")
    write_text(out / "torchvision.md", header + "\n".join(rows) + "\n")
    write_json(out / "torchvision.json", reports)
    return 0 if all(r["passed"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
