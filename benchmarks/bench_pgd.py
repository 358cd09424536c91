"""PGD-10 over 10,000 MNIST-size images for the MLP and the CNN: manualbp on NumPy against the
same attack on the same model (same weights) in PyTorch on the CPU (CuPy against PyTorch CUDA
with ``--backend cupy``), side by side in one run.

    python benchmarks/bench_pgd.py [--backend numpy|cupy] [--repeats 3] [--images 10000] [--batch 500]
                                   [--kernels fast|reference] [--json out.json]

PyTorch attacks the model's twin (:func:`manualbp.verify.to_torch`: the same weights, in
evaluation mode). manualbp takes every input gradient from ``model.backward`` inside
``input_gradient_only`` (the layers skip their parameter gradients). PyTorch runs the attack two
ways: ``torch.autograd.grad(loss, x)`` (input gradient only, as torchattacks does) and
``loss.backward()`` (parameter gradients too, as the paper's released code does). Runs alternate
between the engines; medians of ``--repeats`` are reported, with ratios manualbp / PyTorch, and
the ratios of the fastest runs (on a shared machine, the runs least disturbed by other load). The
images are on the device before timing. With ``--backend cupy`` and a PyTorch without CUDA the
PyTorch side is skipped, with a line saying so, and manualbp is timed alone.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import functools
import json
import statistics

import numpy as np
import torch

from manualbp import get_backend, zoo
from manualbp.attacks import pgd
from manualbp.experiments import add_kernels_argument
from manualbp.model import evaluating
from manualbp.verify import to_torch
from common import cell, gpu_name, ratio, same_threads, timed, torch_device_for, torch_synchronize

BUDGET, ALPHA, STEPS = 25 / 255, 5 / 255, 10


def images(n):
    """The last ``n`` Fashion-MNIST images as rows of pixels in [0, 1] and their labels (random
    images when the data is missing), and the source's name."""
    try:
        from manualbp.data import load_mnist
        data = load_mnist("fashion-mnist", download=False)
    except Exception:
        rng = np.random.default_rng(0)
        return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n), "random images"
    x = data["x"][-n:]
    return (x.reshape(len(x), -1) / np.float32(255)).astype(np.float32), data["y"][-n:], "Fashion-MNIST test images"


def torch_pgd(net, x, y, batch, input_only):
    out = []
    for i in range(0, len(x), batch):
        x0, yb = x[i:i + batch], y[i:i + batch]
        low, high = (x0 - BUDGET).clamp(min=0), (x0 + BUDGET).clamp(max=1)
        adv = x0.clone()
        for _ in range(STEPS):
            adv.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(net(adv), yb)
            if input_only:
                (grad,) = torch.autograd.grad(loss, adv)
            else:
                net.zero_grad(set_to_none=True)
                loss.backward()
                grad = adv.grad
            adv = torch.max(torch.min(adv.detach() + ALPHA * grad.sign(), high), low)
        out.append(adv)
    return torch.cat(out)


def manualbp_pgd(model, x, y, batch):
    with evaluating(model):
        return model.xp.concatenate([pgd(model, x[i:i + batch], y[i:i + batch], BUDGET, ALPHA, STEPS)
                                     for i in range(0, len(x), batch)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--models", default="mlp,cnn")
    add_kernels_argument(parser)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    threads = same_threads()
    device = torch_device_for(args.backend)
    torch_sync = functools.partial(torch_synchronize, device)
    x, y, source = images(args.images)
    bk = get_backend(args.backend, "float32", 0, args.kernels)
    results = {}
    for name in args.models.split(","):
        model = zoo.mlp(bk, "mlp", "relu") if name == "mlp" else zoo.cnn(bk, "cnn")
        shape = (-1,) + tuple(model.input_shape)
        xm, ym = bk.asarray(x.reshape(shape)), bk.asarray(y, dtype="int64")     # on the device once
        runs = {"manualbp": (lambda: manualbp_pgd(model, xm, ym, args.batch), bk.synchronize)}
        check = manualbp_pgd(model, xm[:200], ym[:200], args.batch)     # also the warm-up
        agree = None
        if device:
            net = to_torch(model, device=device).eval()
            tx, ty = (torch.from_numpy(a).to(device) for a in (x.reshape(shape), y.astype(np.int64)))
            reference = torch_pgd(net, tx[:200], ty[:200], args.batch, True).cpu().numpy()
            torch_pgd(net, tx[:200], ty[:200], args.batch, False)
            agree = float((np.abs(bk.to_host(check) - reference) < 1e-5).mean())
            runs["torch input grad"] = (lambda: torch_pgd(net, tx, ty, args.batch, True), torch_sync)
            runs["torch loss.backward"] = (lambda: torch_pgd(net, tx, ty, args.batch, False), torch_sync)
        times = {k: [] for k in runs}
        for _ in range(args.repeats):
            for k, (run, sync) in runs.items():
                times[k].append(timed(run, sync))
        med = {k: statistics.median(v) for k, v in times.items()}
        best = {k: min(v) for k, v in times.items()}
        results[name] = {"seconds": times, "median_seconds": med, "agreement_with_torch": agree,
                         "ratio_vs_input_grad": ratio(med["manualbp"], med.get("torch input grad")),
                         "ratio_vs_loss_backward": ratio(med["manualbp"], med.get("torch loss.backward")),
                         "best_ratio_vs_input_grad": ratio(best["manualbp"], best.get("torch input grad")),
                         "best_ratio_vs_loss_backward": ratio(best["manualbp"], best.get("torch loss.backward"))}
    where = f"threads: {threads}" if args.backend == "numpy" else f"cupy on {gpu_name()}"
    print(f"PGD-{STEPS} (budget {BUDGET:.4f}, alpha {ALPHA:.4f}) on {args.images} {source}, batch {args.batch}; "
          f"kernels: {args.kernels}; {where}; torch {torch.__version__}, numpy {np.__version__}; "
          f"median of {args.repeats}")
    print(f"{'model':5s} {'manualbp s':>11s} {'torch grad(x) s':>16s} {'ratio':>6s} {'torch backward() s':>19s} "
          f"{'ratio':>6s} {'same adv':>9s}")
    for name, r in results.items():
        m = r["median_seconds"]
        print(f"{name:5s} {m['manualbp']:11.2f} {cell(m.get('torch input grad'), 16, '.2f')} "
              f"{cell(r['ratio_vs_input_grad'], 6, '.2f')} {cell(m.get('torch loss.backward'), 19, '.2f')} "
              f"{cell(r['ratio_vs_loss_backward'], 6, '.2f')} {cell(r['agreement_with_torch'], 9, '.4f')}")
    if device:
        print("ratios of the fastest runs (least disturbed by other load): " + ", ".join(
            f"{name} {r['best_ratio_vs_input_grad']:.2f} / {r['best_ratio_vs_loss_backward']:.2f}"
            for name, r in results.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "backend": args.backend, "kernels": args.kernels, "threads": threads,
                       "batch": args.batch, "images": args.images, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
