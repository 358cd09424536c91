"""One training epoch of MLP, MLP+ and MLPN (784-100-50-10, ReLU, batch 128, Adam) on the NumPy
backend against the same models in PyTorch on the CPU, side by side in one run.

    python benchmarks/bench_mlp.py [--repeats 5] [--kernels fast|reference] [--json out.json]

Each epoch is 50,000 images (the paper's training split of Fashion-MNIST when the data is found,
random images otherwise); a step is :meth:`manualbp.train.Trainer.step` in manualbp and
:func:`common.torch_train_step` on the model's twin (:func:`manualbp.verify.to_torch`, the same
initial weights) in PyTorch. Runs alternate between the engines; the median of ``--repeats``
epochs is reported, with ratios manualbp / PyTorch (below 1: manualbp is faster). Also reports the cost
of learning sigma, MLPN / MLP+ -- measured apart, from rounds of 100 training steps of the two
alternating (median of the per-round ratios), since a difference of a few per cent drowns in
the drift between whole epochs -- and the speed of the noise draws.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import json
import statistics
import time

import numpy as np
import torch

from manualbp import get_backend
from manualbp.experiments import add_kernels_argument
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import mlp
from common import same_threads, torch_twin, training_data

VARIANTS = ("mlp", "mlp+", "mlpn")
BATCH = 128


def build(variant, seed, kernels):
    """The manualbp model of ``variant`` (initial weights from ``seed``) with its optimisers, and
    the PyTorch side: the model's twin (the same initial weights) and its training step."""
    model = mlp(get_backend("numpy", "float32", seed, kernels), variant, "relu")
    _, torch_step = torch_twin(model)
    optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
    return Trainer(model, optimizers, batch_size=BATCH, seed=seed, progress=False), torch_step


def torch_epoch(step, x, y, seed):
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    perm = torch.randperm(len(x))
    for i in range(0, len(x), BATCH):
        idx = perm[i:i + BATCH]
        step(x[idx], y[idx])
    return time.perf_counter() - t0


def manualbp_epoch(trainer, x, y):
    t0 = time.perf_counter()
    trainer.train_epoch(x, y, epoch=0)
    return time.perf_counter() - t0


def sigma_cost(x, y, kernels, rounds=30, steps=100):
    """Median over ``rounds`` of (time of ``steps`` MLPN steps) / (time of ``steps`` MLP+ steps),
    the two models alternating on the same batches: the cost of learning sigma (Eq. 3 and 7)
    over drawing the same noise with a fixed sigma."""
    steppers = {}
    for variant in ("mlp+", "mlpn"):
        model = mlp(get_backend("numpy", "float32", 0, kernels), variant, "relu")
        optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
        steppers[variant] = Trainer(model, optimizers, batch_size=BATCH, progress=False).step
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, steps * BATCH, BATCH)]
    ratios = []
    for _ in range(rounds + 1):                          # the first round warms up
        seconds = {}
        for variant, step in steppers.items():
            t0 = time.perf_counter()
            for xb, yb in batches:
                step(xb, yb)
            seconds[variant] = time.perf_counter() - t0
        ratios.append(seconds["mlpn"] / seconds["mlp+"])
    return statistics.median(ratios[1:])


def noise_draw_rates(kernels, n=1 << 22):
    """Million samples per second of N(0, 1) draws: NumPy's ziggurat (float64, float32, float32
    into a preallocated buffer), the backend's float32 sampler, and PyTorch (float32)."""
    rng = np.random.default_rng(0)
    bk = get_backend("numpy", "float32", 0, kernels)
    buf = np.empty(n, np.float32)
    tbuf = torch.empty(n)
    cases = {"numpy float64": lambda: rng.standard_normal(n),
             "numpy float32": lambda: rng.standard_normal(n, dtype=np.float32),
             "numpy float32, out=": lambda: rng.standard_normal(dtype=np.float32, out=buf),
             "manualbp backend, out=": lambda: bk.normal(buf.shape, out=buf),
             "torch float32, out=": lambda: tbuf.normal_()}
    rates = {}
    for name, draw in cases.items():
        draw()
        t0 = time.perf_counter()
        for _ in range(5):
            draw()
        rates[name] = 5 * n / (time.perf_counter() - t0) / 1e6
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    add_kernels_argument(parser)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    threads = same_threads()
    x, y, source = training_data()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    times = {v: {"manualbp": [], "torch": []} for v in VARIANTS}
    trainer, torch_step = build("mlp", 0, args.kernels)   # warm-up: touch the data once
    manualbp_epoch(trainer, x, y)
    torch_epoch(torch_step, tx, ty, 0)
    for r in range(args.repeats):
        for v in VARIANTS:
            trainer, torch_step = build(v, r, args.kernels)
            times[v]["manualbp"].append(manualbp_epoch(trainer, x, y))
            times[v]["torch"].append(torch_epoch(torch_step, tx, ty, r))
    med = {v: {k: statistics.median(t) for k, t in times[v].items()} for v in VARIANTS}
    print(f"data: {source}, {len(x)} images, batch {BATCH}; kernels: {args.kernels}; threads: {threads}; "
          f"torch {torch.__version__}, numpy {np.__version__}; median of {args.repeats} epochs")
    print(f"{'model':6s} {'manualbp s':>11s} {'torch s':>8s} {'ratio':>6s}")
    for v in VARIANTS:
        m = med[v]
        print(f"{v:6s} {m['manualbp']:11.3f} {m['torch']:8.3f} {m['manualbp'] / m['torch']:6.2f}")
    cost = sigma_cost(x, y, args.kernels)
    print(f"cost of learning sigma, MLPN / MLP+ (manualbp, steps interleaved): {cost:.3f}; "
          f"from the epochs above: {med['mlpn']['manualbp'] / med['mlp+']['manualbp']:.3f}")
    rates = noise_draw_rates(args.kernels)
    for name, rate in rates.items():
        print(f"N(0,1) draws, {name:22s} {rate:7.0f} M/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "kernels": args.kernels, "threads": threads, "median_seconds": med,
                       "mlpn_over_mlp_plus": cost, "noise_draws_M_per_s": rates}, f, indent=2)


if __name__ == "__main__":
    main()
