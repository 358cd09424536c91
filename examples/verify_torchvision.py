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


HEADER = ("| model | mode | verdict | arrays | worst relative error within tolerance | passed as round-off / as "
          "PyTorch's own error | seconds | ops |\n|---|---|---|---|---|---|---|---|\n")


def table_row(entry):
    """One row of the table from one model's entry of ``torchvision.json``: the worst relative
    error among the arrays judged by it alone (not near zero, no round-off or reference reason)."""
    judged = [r for r in entry["rows"] if not r["near_zero"] and not r["reason"]]
    worst = max(judged, key=lambda r: r["max_rel"])
    reasons = Counter(r["reason"] for r in entry["rows"])
    return (f"| {entry['model']} | {entry['mode']} | {'pass' if entry['passed'] else 'FAIL'} | {len(entry['rows'])} | "
            f"{worst['max_rel']:.1e} ({worst['name']}) | {reasons['round-off']} / {reasons['reference']} | "
            f"{entry['seconds']:.1f} | {', '.join(sorted(entry['ops']))} |")


def main(argv=None):
    args = parse_args(argv)
    from manualbp.checkpoint import write_json, write_text
    entries = []
    for name in args.models:
        for mode in ("train", "eval"):
            report, ops, seconds = verify(name, mode, args.batch, args.seed)
            entries.append({"model": name, "mode": mode, "seconds": seconds, "ops": dict(ops), **report.to_dict()})
            print(table_row(entries[-1]), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "torchvision.md", HEADER + "\n".join(map(table_row, entries)) + "\n")
    write_json(out / "torchvision.json", entries)
    return 0 if all(entry["passed"] for entry in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
