"""Training steps of the MNIST CNN and CNN-AN (batch 128, 1x28x28, Adam) on the NumPy backend
against the same models in PyTorch on the CPU (CuPy against PyTorch CUDA with ``--backend cupy``),
side by side in one run.

    python benchmarks/bench_cnn.py [--backend numpy|cupy] [--rounds 7] [--steps 20]
                                   [--epochs N] [--images 50000] [--kernels fast|reference]
                                   [--json out.json]

Each round times ``--steps`` consecutive training steps of every model in both engines, one
after the other: :meth:`manualbp.train.Trainer.step` in manualbp, :func:`common.torch_train_step`
on the model's twin (:func:`manualbp.verify.to_torch`, the same initial weights) in PyTorch. The
median over rounds of the mean step time is reported, with ratios manualbp / PyTorch (below 1:
manualbp is faster) and per-epoch estimates (50,000 images / 128 = 391 steps; data shuffling and
evaluation not included; the batches are on the device before timing). PyTorch gets as many
threads as NumPy's loops and BLAS have (``MANUALBP_NUM_THREADS``, else the CPUs this process may
use). With ``--backend cupy`` and a PyTorch without CUDA the PyTorch side is skipped, with a line
saying so, and manualbp is timed alone.

Then ``--epochs`` whole epochs (default: 3 with CuPy, none on NumPy, where one takes minutes) of
each model in both engines, alternating: :meth:`~manualbp.train.Trainer.train_epoch` over the
training images on the device (``--images``: the first ones only) against the same epoch of the
twin, shuffled on the device (:func:`common.torch_epoch`). Reported: the median epoch, the ratio,
and the epoch over its steps at the step time above -- what shuffling and batching (the data
loading of a run whose data is on the device) add to the steps.

Then instrumented passes over the same batches (one warm-up pass, then the median of
max(3, ``--rounds``)) split a manualbp step into its parts -- the convolution GEMMs, im2col/col2im
and the noise draws, timed where the path chosen by ``--kernels`` calls them -- and the rest.
The GEMMs' achieved GFLOP/s is set against NumPy's float32 matmul of two 2048x2048 matrices,
measured just before each model's breakdown. Parts adding up to more than the step, or GEMMs
faster than that peak, can only come from a disturbed measurement, and are reported as such.
The breakdown is made on NumPy only: on the GPU a call returns before its work is done.

OpenBLAS's threads spin for a while after each matrix product and so hold the second core
that manualbp's threaded im2col/col2im/pooling loops and noise draws want; importing manualbp
before NumPy sets ``OPENBLAS_THREAD_TIMEOUT=1`` (they sleep at once) unless the environment
sets it (``OPENBLAS_THREAD_TIMEOUT=28`` is OpenBLAS's own default). The BLAS environment is
printed.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import functools
import importlib
import json
import math
import os
import statistics
import time

import numpy as np
import torch

from manualbp import get_backend
from manualbp.experiments import add_kernels_argument
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import cnn
from common import (N_TRAIN, cell, gpu_name, manualbp_epoch, medians, on_devices, ratio, same_threads, time_steps,
                    timed, torch_device_for, torch_epoch, torch_synchronize, torch_twin, training_data)

conv_ops = importlib.import_module("manualbp.ops.conv")            # the modules, not the functions
fast_im2col = importlib.import_module("manualbp.ops.im2col_fast")

BATCH = 128
STEPS_PER_EPOCH = -(-N_TRAIN // BATCH)
MODELS = ("cnn", "cnn-an")


def steppers(variant, seed, backend, kernels, device):
    """``{"manualbp": Trainer, "torch": step(x, y)}`` of one manualbp model of ``variant`` on
    ``backend`` (initial weights from ``seed``) and its PyTorch twin on ``device`` (the same
    initial weights; left out without a device)."""
    model = cnn(get_backend(backend, "float32", seed, kernels), variant)
    torch_side = {"torch": torch_twin(model, device=device)[1]} if device else {}
    optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
    return {"manualbp": Trainer(model, optimizers, batch_size=BATCH, seed=seed, progress=False), **torch_side}


#: Per ``--kernels``: the module whose im2col/col2im the conv op calls (looked up there by name,
#: so patched there), the conv op's forward that runs, and the array function doing its GEMMs.
CONV_PATHS = {"fast": (fast_im2col, conv_ops.conv_forward_batch_inner, "matmul"),
              "reference": (conv_ops, conv_ops.conv_forward, "matmul")}
PARTS = ("conv GEMM", "im2col/col2im", "noise draws")


def gemm_flops(name, result, a, b, axes=2, **_):
    """2 x (elements of the product) x (length of each dot product), for matmul or tensordot."""
    if name == "matmul":
        k = a.shape[-1]
    else:
        axes_a = range(a.ndim - axes, a.ndim) if isinstance(axes, int) else np.atleast_1d(axes[0])
        k = math.prod(a.shape[i] for i in axes_a)
    return 2 * result.size * k


class Instrumented:
    """Within the block, the wall time of the parts of a step on the path ``bk.kernels`` selects:
    the GEMMs of its conv layers (``xp.matmul`` of the NumPy ``conv2d`` kernel, or
    ``xp.tensordot`` of the reference, with its internal copies), the im2col/col2im that op
    calls, and the backend's noise draws. The timed calls
    return only when their threads are done and none runs inside another, so in one pass the
    parts add up to at most the step."""

    def __init__(self, bk, model):
        self.module, forward, self.gemm_name = CONV_PATHS[bk.kernels]
        self.bk, self.layers = bk, [m for _, m in model.modules() if m.op is conv_ops.conv2d]
        if not self.layers or bk.kernel(conv_ops.conv2d)[0] is not forward:
            raise RuntimeError(f"kernels={bk.kernels!r}: expected conv layers running {forward.__name__}, "
                               f"got {bk.kernel(conv_ops.conv2d)[0].__name__}")
        self.reset()

    def reset(self):
        self.seconds, self.calls, self.flops = dict.fromkeys(PARTS, 0.0), dict.fromkeys(PARTS, 0), 0

    def _timed(self, part, fn, flops=None):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            result = fn(*args, **kwargs)
            self.seconds[part] += time.perf_counter() - t0
            self.calls[part] += 1
            if flops is not None:
                self.flops += flops(result, *args, **kwargs)
            return result
        return wrapper

    def __enter__(self):
        m = self.module
        self.saved = (m.im2col, m.col2im, self.bk.normal, [layer.xp for layer in self.layers])
        m.im2col, m.col2im = (self._timed("im2col/col2im", f) for f in (m.im2col, m.col2im))
        self.bk.normal = self._timed("noise draws", self.bk.normal)
        for layer in self.layers:
            gemm = getattr(layer.xp, self.gemm_name)
            flops = functools.partial(gemm_flops, self.gemm_name)
            layer.xp = _Xp(layer.xp, **{self.gemm_name: self._timed("conv GEMM", gemm, flops)})
        return self

    def __exit__(self, *exc):
        self.module.im2col, self.module.col2im, self.bk.normal, xps = self.saved
        for layer, xp in zip(self.layers, xps):
            layer.xp = xp


class _Xp:
    """The array module ``module``, with some of its functions replaced (given to conv layers)."""

    def __init__(self, module, **replaced):
        self._module = module
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._module, name)


def breakdown(trainer, batches, passes):
    """Seconds per :meth:`~manualbp.train.Trainer.step` of each part and of the instrumented step
    (medians over ``passes`` passes over ``batches``, after one instrumented warm-up pass), and
    the conv GEMM flops per step."""
    probe = Instrumented(trainer.bk, trainer.model)
    runs = []
    with probe:
        for _ in range(passes + 1):
            probe.reset()
            total = time_steps(trainer.step, batches, trainer.bk.synchronize)
            runs.append((total, {k: v / len(batches) for k, v in probe.seconds.items()}))
    missed = [k for k in PARTS[:2] if probe.calls[k] == 0]
    if missed:
        raise RuntimeError(f"the probe saw no calls of {missed}: it patches what this path does not call")
    runs = runs[1:]
    parts = {k: statistics.median(r[1][k] for r in runs) for k in PARTS}
    return statistics.median(r[0] for r in runs), parts, probe.flops / len(batches)


def peak_matmul_gflops(n=2048, repeats=5):
    """NumPy float32 matmul of two n x n matrices (the best of ``repeats``), and PyTorch's."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    out = np.empty_like(a)
    ta = torch.from_numpy(a)
    result = {}
    for name, product in (("numpy", lambda: np.matmul(a, a, out=out)), ("torch", lambda: ta @ ta)):
        product()
        best = min(timed(product, lambda: None) for _ in range(repeats))
        result[name] = 2 * n ** 3 / best / 1e9
    return result


def print_breakdown(name, timed, total, parts, flops, gflops, peak):
    rest = total - sum(parts.values())
    print(f"{name:7s} step {total * 1e3:.1f} ms instrumented ({timed * 1e3:.1f} ms timed above); "
          f"float32 matmul 2048x2048 just before: NumPy {peak['numpy']:.0f} GFLOP/s, "
          f"PyTorch {peak['torch']:.0f}")
    if total > 1.5 * timed:
        print(f"        warning: the instrumented step took {total / timed:.1f}x the timed one: the machine's "
              "load changed (or the probes cost that much); read the parts with care")
    if rest >= 0:
        print("        " + ", ".join(f"{k} {t * 1e3:.1f} ms ({t / total:.0%})" for k, t in parts.items())
              + f", rest {rest * 1e3:.1f} ms ({rest / total:.0%})")
    else:
        print("        " + ", ".join(f"{k} {t * 1e3:.1f} ms" for k, t in parts.items()))
        print(f"        warning: the parts add up to {(total - rest) * 1e3:.1f} ms, more than the step: "
              "the passes were disturbed (other load); no shares")
    rate = f"conv GEMMs: {flops / 1e9:.2f} GFLOP per step at {gflops:.0f} GFLOP/s"
    if gflops <= peak["numpy"]:
        print(f"        {rate} = {gflops / peak['numpy']:.0%} of NumPy's peak")
    else:
        print(f"        {rate}, above NumPy's peak measured just before: the measurement was disturbed "
              "(other load)")


def whole_epochs(engines, x, y, count, device):
    """Median seconds of ``count`` epochs over ``x, y`` (host arrays) of each model's engines,
    alternating, the data on the device before timing."""
    bk = engines[MODELS[0]]["manualbp"].bk
    (xm, ym), (tx, ty) = on_devices(bk, device, x, y)
    times = {v: {k: [] for k in engines[v]} for v in MODELS}
    for r in range(count):
        for v in MODELS:
            times[v]["manualbp"].append(manualbp_epoch(engines[v]["manualbp"], xm, ym))
            if device:
                times[v]["torch"].append(torch_epoch(engines[v]["torch"], tx, ty, BATCH, r, device))
    return medians(times)


def print_epochs(epochs, med, images, count):
    steps = -(-images // BATCH)
    print(f"whole epochs of {images} images ({steps} steps), data on the device, median of {count}:")
    print(f"{'model':7s} {'manualbp s':>11s} {'torch s':>8s} {'ratio':>6s} {'manualbp epoch / its steps':>27s}")
    for v in MODELS:
        m, t = epochs[v]["manualbp"], epochs[v].get("torch")
        print(f"{v:7s} {m:11.2f} {cell(t, 8, '.2f')} {cell(ratio(m, t), 6, '.2f')} "
              f"{m / (steps * med[v]['manualbp']):27.2f}")


def breakdowns(engines, batches, med, passes):
    """Print the breakdown of each model's manualbp step (``med``: the step times timed above) and
    return the figures."""
    print(f"breakdown of a manualbp step: median of {passes} instrumented passes over the same batches, "
          "after a warm-up pass")
    figures = {}
    for v in MODELS:
        peak = peak_matmul_gflops()                    # just before, in the same conditions
        total, parts, flops = breakdown(engines[v]["manualbp"], batches, passes)
        gflops = flops / parts["conv GEMM"] / 1e9
        figures[v] = {"step_seconds": total, "parts_seconds": parts, "conv_gemm_flops_per_step": flops,
                      "conv_gemm_gflops": gflops, "matmul_gflops_just_before": peak}
        print_breakdown(v, med[v]["manualbp"], total, parts, flops, gflops, peak)
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round and engine")
    parser.add_argument("--epochs", type=int, default=None,
                        help="whole epochs per model and engine (default: 3 with cupy, 0 with numpy)")
    parser.add_argument("--images", type=int, default=None, help="images per epoch (default: all 50,000)")
    add_kernels_argument(parser)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    threads = same_threads()
    device = torch_device_for(args.backend)
    x, y, source = training_data((1, 28, 28))
    order = np.random.default_rng(0).permutation(len(x))[:args.steps * BATCH]
    host_batches = [(np.ascontiguousarray(x[order[i:i + BATCH]]), y[order[i:i + BATCH]])
                    for i in range(0, len(order), BATCH)]
    bk = get_backend(args.backend, "float32", 0, args.kernels)
    batches = [(bk.asarray(a), bk.asarray(b, dtype="int64")) for a, b in host_batches]   # on the device once
    torch_batches = [(torch.from_numpy(a).to(device), torch.from_numpy(b).to(device))
                     for a, b in host_batches] if device else []
    torch_sync = functools.partial(torch_synchronize, device)

    torch.manual_seed(0)
    engines = {v: steppers(v, 0, args.backend, args.kernels, device) for v in MODELS}
    for v in MODELS:                                   # warm-up: buffers, thread pools, caches
        time_steps(engines[v]["manualbp"].step, batches[:3], bk.synchronize)
        if device:
            time_steps(engines[v]["torch"], torch_batches[:3], torch_sync)
    times = {v: {k: [] for k in engines[v]} for v in MODELS}
    for _ in range(args.rounds):
        for v in MODELS:
            if device:
                times[v]["torch"].append(time_steps(engines[v]["torch"], torch_batches, torch_sync))
            times[v]["manualbp"].append(time_steps(engines[v]["manualbp"].step, batches, bk.synchronize))
    med = medians(times)

    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                            "OPENBLAS_THREAD_TIMEOUT", "MANUALBP_NUM_THREADS")}
    where = (f"threads: {threads} (torch.set_num_threads({threads}))" if args.backend == "numpy"
             else f"cupy on {gpu_name()}")
    print(f"data: {source}; batch {BATCH}; kernels: {args.kernels}; {where}; torch {torch.__version__}, "
          f"numpy {np.__version__}; median of {args.rounds} rounds of {args.steps} steps")
    print("environment: " + (", ".join(f"{k}={v}" for k, v in env.items() if v is not None) or "-"))
    print(f"{'model':7s} {'manualbp ms':>12s} {'torch ms':>9s} {'ratio':>6s} "
          f"{'manualbp s/epoch':>17s} {'torch s/epoch':>14s}")
    for v in MODELS:
        m, t = med[v]["manualbp"], med[v].get("torch")
        print(f"{v:7s} {m * 1e3:12.1f} {cell(t, 9, '.1f', 1e3)} {cell(ratio(m, t), 6, '.2f')} "
              f"{m * STEPS_PER_EPOCH:17.1f} {cell(t, 14, '.1f', STEPS_PER_EPOCH)}")
    own_an = med["cnn-an"]["manualbp"] / med["cnn"]["manualbp"]
    if device:
        print(f"manualbp CNN-AN / PyTorch CNN-AN: {med['cnn-an']['manualbp'] / med['cnn-an']['torch']:.2f};  "
              f"manualbp CNN-AN / CNN: {own_an:.2f}, PyTorch: {med['cnn-an']['torch'] / med['cnn']['torch']:.2f}")
    else:
        print(f"manualbp CNN-AN / CNN: {own_an:.2f}")

    count = (3 if args.backend == "cupy" else 0) if args.epochs is None else args.epochs
    epoch_x, epoch_y = x[:args.images], y[:args.images]
    epochs = {}
    if count:
        epochs = whole_epochs(engines, epoch_x, epoch_y, count, device)
        print_epochs(epochs, med, len(epoch_x), count)

    if args.backend == "numpy":
        parts_all = breakdowns(engines, batches, med, max(3, args.rounds))
    else:
        parts_all = {}
        print("breakdown of a manualbp step: on NumPy only (on the GPU a call returns before its work is done)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "backend": args.backend, "threads": threads, "median_step_seconds": med,
                       "median_epoch_seconds": epochs, "epoch_images": len(epoch_x),
                       "kernels": args.kernels, "steps_per_epoch": STEPS_PER_EPOCH,
                       "breakdown": parts_all, "env": env},
                      f, indent=2)


if __name__ == "__main__":
    main()
