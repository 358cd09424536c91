"""One training step of ResNet18 (and ResNet34) in manualbp against the same model in PyTorch,
side by side in one run, as a ratio manualbp / PyTorch (below 1: manualbp is faster).

    python benchmarks/bench_resnet.py                   # NumPy vs PyTorch CPU: ResNet18, batch 32
    python benchmarks/bench_resnet.py --backend cupy    # CuPy vs PyTorch CUDA: ResNet18 and 34
    python benchmarks/bench_resnet.py --kernels reference   # manualbp's reference layers

A step is forward, cross-entropy, backward and the Adam update (lr 1e-3, weight decay 1e-4; for
learned noise also the Eq. (7) update of sigma). ResNet18 gets 32x32 inputs and the CIFAR-10
head (FC 256 -> 128 -> 10), ResNet34 64x64 inputs and the Tiny-ImageNet head (FC 1024 -> 512 ->
256 -> 200). manualbp runs :meth:`manualbp.train.Trainer.step`, PyTorch
:func:`common.torch_train_step` on the model's twin (:func:`manualbp.verify.to_torch`, the same
initial weights); both float32 on the same device and the same random batch. PyTorch uses as
many CPU threads as the machine has and, on the GPU, no TF32 (CuPy computes in full float32).
With ``--backend cupy`` and a PyTorch without CUDA (CPU PyTorch beside CuPy) the PyTorch side
is skipped, with a line saying so, and manualbp is timed alone. Rounds alternate between the engines; each reports the median step time, and the
ratio is the median over rounds of the two adjacent rounds' ratio (robust to a machine whose load
changes during the run).
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import json
import statistics

import numpy as np
import torch

from manualbp import get_backend
from manualbp.experiments import add_kernels_argument
from manualbp.datasets import get_dataset
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import get_family
from common import cell, gpu_name, same_threads, timed, torch_device_for, torch_synchronize, torch_twin


def build(name, suffix, backend, kernels):
    """The manualbp model ``name + suffix`` of the registry (float32, initial weights from seed 0),
    its optimisers and the number of classes of its dataset."""
    family = get_family(name)
    model = family.model(get_backend(backend, "float32", 0, kernels), name + suffix)
    optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
    return model, optimizers, get_dataset(family.datasets[0]).classes


def manualbp_stepper(model, optimizers, x, y):
    bk = model.bk
    step = Trainer(model, optimizers, batch_size=len(x), progress=False).step
    x, y = bk.asarray(x), bk.asarray(y, dtype="int64")
    return (lambda: step(x, y)), bk.synchronize


def torch_stepper(model, x, y, device):
    """The training step of ``model``'s PyTorch twin on ``device`` (built before ``model`` trains)."""
    _, step = torch_twin(model, device=device)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    return lambda: step(x, y)


def bench(name, suffix, batch, backend, kernels, rounds, steps, device):
    """Median step times of both engines and the median ratio of adjacent rounds; ``device``:
    PyTorch's, ``None`` to time manualbp alone."""
    model, optimizers, classes = build(name, suffix, backend, kernels)
    rng = np.random.default_rng(0)
    x = rng.random((batch, *model.input_shape), dtype=np.float32)
    y = rng.integers(0, classes, batch).astype(np.int64)
    engines = {"torch": (torch_stepper(model, x, y, device), lambda: torch_synchronize(device))} if device else {}
    engines = {"manualbp": manualbp_stepper(model, optimizers, x, y), **engines}
    for _ in range(2):                                     # warm-up: buffers, kernels, caches
        for step, _ in engines.values():
            step()
    times = {k: [] for k in engines}
    for _ in range(rounds):
        for k, (step, sync) in engines.items():
            times[k].append(timed(step, sync, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(m / t for m, t in zip(times["manualbp"], times["torch"])) if device else None
    return {"model": name + suffix, "batch": batch, "input": model.input_shape[-1], "manualbp": med["manualbp"],
            "torch": med.get("torch"), "ratio": ratio}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--batch", type=int, default=None, help="default: 32 (numpy), 128 (cupy)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="default: resnet18 resnet18-an (numpy); also resnet34, resnet34-an (cupy)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="steps per round (default 2 / 10)")
    add_kernels_argument(parser)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    gpu = args.backend == "cupy"
    batch = args.batch or (128 if gpu else 32)
    steps = args.steps or (10 if gpu else 2)
    models = args.models or (["resnet18", "resnet18-an"] + (["resnet34", "resnet34-an"] if gpu else []))
    torch_device = torch_device_for(args.backend)
    device = gpu_name() if gpu else f"CPU, {same_threads()} threads"
    print(f"{args.backend} ({args.kernels} kernels) vs torch {torch.__version__} on {device}; "
          f"numpy {np.__version__}; batch {batch}; median of {args.rounds} rounds of {steps} steps")
    print(f"{'model':14s} {'input':>5s} {'manualbp s':>11s} {'torch s':>8s} {'ratio':>6s}")
    results = []
    for model in models:
        name = model[:8]
        r = bench(name, model[8:], batch, args.backend, args.kernels, args.rounds, steps, torch_device)
        results.append(r)
        print(f"{r['model']:14s} {r['input']:5d} {r['manualbp']:11.3f} {cell(r['torch'], 8, '.3f')} "
              f"{cell(r['ratio'], 6, '.2f')}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "kernels": args.kernels, "device": device, "results": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
