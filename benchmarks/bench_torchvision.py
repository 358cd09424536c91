"""torchvision's classifiers traced into manualbp: one forward and backward pass (the gradients
of every parameter) of the imported graph against the same module in PyTorch, side by side in one
run, as a ratio manualbp / PyTorch (below 1: manualbp is faster).

    python benchmarks/bench_torchvision.py                       # four models, batch 16, 32x32
    python benchmarks/bench_torchvision.py --models mobilenet_v2 --batch 32 --kernels reference

Both sides float32 on the CPU, training mode, the same weights (random, seed 0) and the same
random batch; manualbp runs the graph :func:`manualbp.verify.from_torch` imports (its ops' fast
kernels: the depthwise convolution of MobileNet and EfficientNet, the grouped one of RegNet and
ResNeXt), PyTorch the module itself (cross-entropy, ``backward``). PyTorch gets as many threads
as manualbp. Rounds alternate between the engines; the ratio is the median over rounds of the
two adjacent rounds' ratio.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import json
import statistics

import torch

from manualbp import get_backend
from manualbp.experiments import add_kernels_argument
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.verify import from_torch
from manualbp.verify.torchvision_zoo import CLASSIFIERS, build
from common import same_threads, timed

DEFAULT_MODELS = ["resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_x_400mf"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(CLASSIFIERS), metavar="NAME")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="passes timed per round")
    add_kernels_argument(parser)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)
    for flag in ("batch", "rounds", "steps"):
        if getattr(args, flag) < (2 if flag == "batch" else 1):
            parser.error(f"--{flag} {getattr(args, flag)}: expected at least {2 if flag == 'batch' else 1}")
    return args


def sides(name, batch, kernels):
    """``(manualbp pass, PyTorch pass)``: each a function running one forward and backward pass."""
    options, shape = CLASSIFIERS[name]
    torch.manual_seed(0)
    module = build(name, 10, **options).float().train()
    bk = get_backend("numpy", "float32", 0, kernels)
    model = from_torch(module, shape, bk, batch)
    x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    xb, yb, loss = bk.asarray(x.numpy()), bk.asarray(y.numpy(), dtype="int64"), SoftmaxCrossEntropy(bk)

    def ours():
        loss.forward(model.forward(xb), yb)
        model.backward(loss.backward(), input_grad=False)

    def theirs():
        module.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(module(x), y).backward()

    return ours, theirs


def main(argv=None):
    args = parse_args(argv)
    threads = same_threads()
    figures = {"kernels": args.kernels, "batch": args.batch, "threads": threads, "models": {}}
    print(f"manualbp ({args.kernels} kernels) vs PyTorch {torch.__version__}, float32 CPU, {threads} threads, "
          f"batch {args.batch}: seconds per forward and backward pass")
    print(f"{'model':<20} {'manualbp':>9} {'PyTorch':>9} {'ratio':>6}")
    for name in args.models:
        ours, theirs = sides(name, args.batch, args.kernels)
        ours(), theirs()                                     # warm-up
        rounds = [(timed(ours, lambda: None, args.steps), timed(theirs, lambda: None, args.steps))
                  for _ in range(args.rounds)]
        mine, other = (statistics.median(r[i] for r in rounds) for i in (0, 1))
        ratio = statistics.median(a / b for a, b in rounds)
        figures["models"][name] = {"manualbp_seconds": mine, "torch_seconds": other, "ratio": ratio}
        print(f"{name:<20} {mine:9.3f} {other:9.3f} {ratio:6.2f}", flush=True)
    print("ratio: manualbp / PyTorch seconds (below 1: manualbp is faster)")
    if args.json:
        from manualbp.checkpoint import write_json
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
