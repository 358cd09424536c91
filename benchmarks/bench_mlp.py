"""One training epoch of MLP, MLP+ and MLPN (784-100-50-10, ReLU, batch 128, Adam) on the NumPy
backend against the same models in PyTorch on the CPU (CuPy against PyTorch CUDA with
``--backend cupy``), side by side in one run.

    python benchmarks/bench_mlp.py [--backend numpy|cupy] [--repeats 5] [--images 50000]
                                   [--sigma-rounds 30] [--kernels fast|reference] [--json out.json]

Each epoch is 50,000 images (the paper's training split of Fashion-MNIST when the data is found,
random images otherwise; ``--images``: its first ones only), moved to the device once before
timing; a step is :meth:`manualbp.train.Trainer.step` in manualbp and
:func:`common.torch_train_step` on the model's twin (:func:`manualbp.verify.to_torch`, the same
initial weights) in PyTorch. Runs alternate between the engines; the median of ``--repeats``
epochs is reported, with ratios manualbp / PyTorch (below 1: manualbp is faster). Also reports the cost
of learning sigma, MLPN / MLP+ -- measured apart, from rounds of 100 training steps of the two
alternating (median of the per-round ratios), since a difference of a few per cent drowns in
the drift between whole epochs -- and the speed of the noise draws. With ``--backend cupy`` and a
PyTorch without CUDA the PyTorch side is skipped, with a line saying so, and manualbp is timed alone.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import json
import statistics

import numpy as np
import torch

from manualbp import get_backend
from manualbp.experiments import add_kernels_argument
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import mlp
from common import (cell, gpu_name, manualbp_epoch, medians, on_devices, ratio, same_threads, time_steps, timed,
                    torch_device_for, torch_epoch, torch_synchronize, torch_twin, training_data)

VARIANTS = ("mlp", "mlp+", "mlpn")
BATCH = 128


def build(variant, seed, backend, kernels, device):
    """The manualbp model of ``variant`` on ``backend`` (initial weights from ``seed``) with its
    optimisers, and the PyTorch side on ``device``: the training step of the model's twin (the
    same initial weights), ``None`` without a device."""
    model = mlp(get_backend(backend, "float32", seed, kernels), variant, "relu")
    torch_step = torch_twin(model, device=device)[1] if device else None
    optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
    return Trainer(model, optimizers, batch_size=BATCH, seed=seed, progress=False), torch_step


def sigma_cost(x, y, backend, kernels, rounds, steps=100):
    """Median over ``rounds`` of (time of ``steps`` MLPN steps) / (time of ``steps`` MLP+ steps),
    the two models alternating on the same batches (fewer when ``x`` holds fewer): the cost of
    learning sigma (Eq. 3 and 7) over drawing the same noise with a fixed sigma."""
    trainers = {}
    for variant in ("mlp+", "mlpn"):
        model = mlp(get_backend(backend, "float32", 0, kernels), variant, "relu")
        optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
        trainers[variant] = Trainer(model, optimizers, batch_size=BATCH, progress=False)
    batches = [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, min(steps * BATCH, len(x)), BATCH)]
    ratios = []
    for _ in range(rounds + 1):                          # the first round warms up
        seconds = {variant: time_steps(trainer.step, batches, trainer.bk.synchronize)
                   for variant, trainer in trainers.items()}
        ratios.append(seconds["mlpn"] / seconds["mlp+"])
    return statistics.median(ratios[1:])


def noise_draw_rates(backend, kernels, device, n=1 << 22):
    """Million samples per second of N(0, 1) draws: NumPy's ziggurat (float64, float32, float32
    into a preallocated buffer), the float32 sampler of ``backend``, and PyTorch's (float32, on
    ``device``; left out without one)."""
    rng = np.random.default_rng(0)
    bk = get_backend(backend, "float32", 0, kernels)
    buf, bk_buf = np.empty(n, np.float32), bk.xp.empty(n, bk.dtype)
    cases = {"numpy float64": lambda: rng.standard_normal(n),
             "numpy float32": lambda: rng.standard_normal(n, dtype=np.float32),
             "numpy float32, out=": lambda: rng.standard_normal(dtype=np.float32, out=buf),
             "manualbp backend, out=": lambda: bk.normal(bk_buf.shape, out=bk_buf)}
    if device:
        tbuf = torch.empty(n, device=device)
        cases["torch float32, out="] = lambda: tbuf.normal_()

    def sync():
        bk.synchronize()
        torch_synchronize(device)
    rates = {}
    for name, draw in cases.items():
        draw()
        rates[name] = n / timed(draw, sync, 5) / 1e6
    return rates


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=None, help="images per epoch (default: all 50,000)")
    parser.add_argument("--sigma-rounds", type=int, default=30,
                        help="rounds of 100 steps that measure the cost of learning sigma")
    add_kernels_argument(parser)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    threads = same_threads()
    device = torch_device_for(args.backend)
    x, y, source = training_data()
    x, y = x[:args.images], y[:args.images]
    bk = get_backend(args.backend, "float32", 0, args.kernels)
    (xm, ym), (tx, ty) = on_devices(bk, device, x, y)
    times = {v: {"manualbp": [], **({"torch": []} if device else {})} for v in VARIANTS}
    trainer, torch_step = build("mlp", 0, args.backend, args.kernels, device)   # warm-up: touch the data once
    manualbp_epoch(trainer, xm, ym)
    if device:
        torch_epoch(torch_step, tx, ty, BATCH, 0, device)
    for r in range(args.repeats):
        for v in VARIANTS:
            trainer, torch_step = build(v, r, args.backend, args.kernels, device)
            times[v]["manualbp"].append(manualbp_epoch(trainer, xm, ym))
            if device:
                times[v]["torch"].append(torch_epoch(torch_step, tx, ty, BATCH, r, device))
    med = medians(times)
    where = f"threads: {threads}" if args.backend == "numpy" else f"cupy on {gpu_name()}"
    print(f"data: {source}, {len(x)} images, batch {BATCH}; kernels: {args.kernels}; {where}; "
          f"torch {torch.__version__}, numpy {np.__version__}; median of {args.repeats} epochs")
    print(f"{'model':6s} {'manualbp s':>11s} {'torch s':>8s} {'ratio':>6s}")
    for v in VARIANTS:
        m = med[v]
        print(f"{v:6s} {m['manualbp']:11.3f} {cell(m.get('torch'), 8, '.3f')} "
              f"{cell(ratio(m['manualbp'], m.get('torch')), 6, '.2f')}")
    cost = sigma_cost(xm, ym, args.backend, args.kernels, args.sigma_rounds)
    print(f"cost of learning sigma, MLPN / MLP+ (manualbp, steps interleaved): {cost:.3f}; "
          f"from the epochs above: {med['mlpn']['manualbp'] / med['mlp+']['manualbp']:.3f}")
    rates = noise_draw_rates(args.backend, args.kernels, device)
    for name, rate in rates.items():
        print(f"N(0,1) draws, {name:22s} {rate:7.0f} M/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "backend": args.backend, "kernels": args.kernels, "threads": threads,
                       "median_seconds": med, "mlpn_over_mlp_plus": cost, "noise_draws_M_per_s": rates}, f,
                      indent=2)


if __name__ == "__main__":
    main()
