"""Training steps of the MNIST CNN and CNN-AN (batch 128, 1x28x28, Adam) on the NumPy backend
against the same models in PyTorch on the CPU, side by side in one run.

    python benchmarks/bench_cnn.py [--rounds 7] [--steps 20] [--json out.json]

Each round times ``--steps`` consecutive training steps of every model in both engines, one
after the other; the median over rounds of the mean step time is reported, with ratios
manualbp / PyTorch (below 1: manualbp is faster) and per-epoch estimates (50,000 images / 128 =
391 steps; data shuffling and evaluation not included). PyTorch gets as many threads as NumPy's
loops and BLAS have (``MANUALBP_NUM_THREADS``, else the CPUs this process may use).

Then one instrumented pass splits a manualbp step into its parts -- the convolution GEMMs
(with their achieved GFLOP/s, against NumPy's float32 matmul on a large square product on the
same machine), im2col/col2im, and the noise draws -- and the rest.

OpenBLAS's threads spin for a while after each matrix product and so hold the second core
that manualbp's threaded im2col/col2im/pooling loops and noise draws want; importing manualbp
before NumPy sets ``OPENBLAS_THREAD_TIMEOUT=1`` (they sleep at once) unless the environment
sets it (``OPENBLAS_THREAD_TIMEOUT=28`` is OpenBLAS's own default). The BLAS environment is
printed.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import importlib
import json
import os
import statistics
import time

import numpy as np
import torch

from manualbp import get_backend
from manualbp.experiments import make_optimizers
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.zoo import cnn
from common import N_TRAIN, same_threads, torch_train_step, training_data

conv_module = importlib.import_module("manualbp.layers.conv")

BATCH = 128
STEPS_PER_EPOCH = -(-N_TRAIN // BATCH)
MODELS = {"cnn": False, "cnn-an": True}          # manualbp variant -> noise on every hidden layer


class TorchCNN(torch.nn.Module):
    """The same CNN in PyTorch. Noisy: ``v + sigma * eps + mu`` on both feature maps (one sigma
    and one mu per element, no conv bias) and ``v + sigma * eps`` on the hidden dense layer."""

    def __init__(self, noisy):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 32, 3, padding=1, bias=not noisy)
        self.conv2 = torch.nn.Conv2d(32, 64, 3, padding=1, bias=not noisy)
        self.fc1, self.fc2 = torch.nn.Linear(3136, 128), torch.nn.Linear(128, 10)
        self.noisy = noisy
        if noisy:
            self.sigma = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(s)) for s in
                                                 ((32, 28, 28), (64, 14, 14), (128,))])
            self.mu = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(s)) for s in
                                              ((32, 28, 28), (64, 14, 14))])

    def forward(self, x):
        F = torch.nn.functional
        for i, conv in enumerate((self.conv1, self.conv2)):
            x = conv(x)
            if self.noisy:
                x = x + self.sigma[i] * torch.randn_like(x) + self.mu[i]
            x = F.max_pool2d(F.relu(x), 2)
        x = self.fc1(torch.flatten(x, 1))
        if self.noisy:
            x = x + self.sigma[2] * torch.randn_like(x)
        return self.fc2(F.relu(x))


def torch_stepper(noisy, seed):
    torch.manual_seed(seed)
    model = TorchCNN(noisy)
    weights = [p for n, p in model.named_parameters() if not n.startswith("sigma")]
    opt = torch.optim.Adam(weights, lr=1e-3, weight_decay=1e-4)
    sigmas = list(model.sigma) if noisy else []
    sigma_opt = torch.optim.Adam(sigmas, lr=1e-3) if noisy else None

    def step(x, y):
        torch_train_step(model, x, y, opt, sigma_opt, sigmas)
    return step


def manualbp_stepper(variant, seed):
    bk = get_backend("numpy", "float32", seed)
    model = cnn(bk, variant)
    optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
    optimizers = [o for o in optimizers if o is not None]
    loss = SoftmaxCrossEntropy(bk)

    def step(x, y):
        loss.forward(model.forward(x), y)
        model.backward(loss.backward(), input_grad=False)
        for opt in optimizers:
            opt.step()
    step.bk, step.model = bk, model
    return step


def time_steps(step, batches):
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    return (time.perf_counter() - t0) / len(batches)


class Instrumented:
    """Within the block, time every GEMM of the convolutions (``xp.matmul`` calls made from
    :mod:`manualbp.layers.conv`), im2col/col2im, and the backend's noise draws."""

    def __init__(self, bk):
        self.bk = bk
        self.seconds = {"conv GEMM": 0.0, "im2col/col2im": 0.0, "noise draws": 0.0}
        self.flops = 0

    def _timed(self, key, fn, flops=None):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[key] += time.perf_counter() - t0
            if flops is not None:
                self.flops += flops(*args)
            return out
        return wrapper

    def __enter__(self):
        self.saved = (conv_module.im2col, conv_module.col2im, self.bk.normal)
        conv_module.im2col = self._timed("im2col/col2im", conv_module.im2col)
        conv_module.col2im = self._timed("im2col/col2im", conv_module.col2im)
        self.bk.normal = self._timed("noise draws", self.bk.normal)
        matmul = np.matmul
        self.gemm = self._timed("conv GEMM", matmul,
                                lambda a, b: 2 * a.shape[0] * a.shape[1] * b.shape[1])
        conv_module_xp = _ConvXp(np, self.gemm)
        self.saved_xp = []
        for layer in _conv_layers(self.model):
            self.saved_xp.append((layer, layer.xp))
            layer.xp = conv_module_xp
        return self

    def __exit__(self, *exc):
        conv_module.im2col, conv_module.col2im, self.bk.normal = self.saved
        for layer, xp in self.saved_xp:
            layer.xp = xp


class _ConvXp:
    """NumPy, except that ``matmul`` is the timed one (given to the conv layers only)."""

    def __init__(self, module, matmul):
        self._module, self.matmul = module, matmul

    def __getattr__(self, name):
        return getattr(self._module, name)


def _conv_layers(model):
    return [m for _, m in model.modules() if isinstance(m, conv_module.Conv2d)]


def breakdown(variant, batches, seed=0):
    """Mean seconds per step of each part, the step itself, and the conv GEMMs' GFLOP/s."""
    step = manualbp_stepper(variant, seed)
    for x, y in batches[:3]:
        step(x, y)
    probe = Instrumented(step.bk)
    probe.model = step.model
    with probe:
        t0 = time.perf_counter()
        for x, y in batches:
            step(x, y)
        total = (time.perf_counter() - t0) / len(batches)
    parts = {k: v / len(batches) for k, v in probe.seconds.items()}
    gflops = probe.flops / len(batches) / parts["conv GEMM"] / 1e9
    return total, parts, gflops


def peak_matmul_gflops(n=2048, repeats=5):
    """NumPy float32 matmul of two n x n matrices (the best of ``repeats``), and PyTorch's."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    out = np.empty_like(a)
    ta = torch.from_numpy(a)
    result = {}
    for name, product in (("numpy", lambda: np.matmul(a, a, out=out)), ("torch", lambda: ta @ ta)):
        product()
        best = min(_seconds(product) for _ in range(repeats))
        result[name] = 2 * n ** 3 / best / 1e9
    return result


def _seconds(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20, help="training steps per round and engine")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    threads = same_threads()
    x, y, source = training_data((1, 28, 28))
    order = np.random.default_rng(0).permutation(len(x))[:args.steps * BATCH]
    np_batches = [(np.ascontiguousarray(x[order[i:i + BATCH]]), y[order[i:i + BATCH]])
                  for i in range(0, len(order), BATCH)]
    torch_batches = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in np_batches]

    steppers = {v: {"manualbp": manualbp_stepper(v, 0), "torch": torch_stepper(noisy, 0)}
                for v, noisy in MODELS.items()}
    for v in MODELS:                                   # warm-up: buffers, thread pools, caches
        time_steps(steppers[v]["manualbp"], np_batches[:3])
        time_steps(steppers[v]["torch"], torch_batches[:3])
    times = {v: {"manualbp": [], "torch": []} for v in MODELS}
    for _ in range(args.rounds):
        for v in MODELS:
            times[v]["torch"].append(time_steps(steppers[v]["torch"], torch_batches))
            times[v]["manualbp"].append(time_steps(steppers[v]["manualbp"], np_batches))
    med = {v: {k: statistics.median(t) for k, t in times[v].items()} for v in MODELS}

    env = {k: os.environ.get(k) for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                            "OPENBLAS_THREAD_TIMEOUT", "MANUALBP_NUM_THREADS")}
    print(f"data: {source}; batch {BATCH}; threads: {threads} (torch.set_num_threads({threads})); "
          f"torch {torch.__version__}, numpy {np.__version__}; "
          f"median of {args.rounds} rounds of {args.steps} steps")
    print("environment: " + (", ".join(f"{k}={v}" for k, v in env.items() if v is not None) or "-"))
    print(f"{'model':7s} {'manualbp ms':>12s} {'torch ms':>9s} {'ratio':>6s} "
          f"{'manualbp s/epoch':>17s} {'torch s/epoch':>14s}")
    for v in MODELS:
        m, t = med[v]["manualbp"], med[v]["torch"]
        print(f"{v:7s} {m * 1e3:12.1f} {t * 1e3:9.1f} {m / t:6.2f} {m * STEPS_PER_EPOCH:17.1f} "
              f"{t * STEPS_PER_EPOCH:14.1f}")
    ratio_an = med["cnn-an"]["manualbp"] / med["cnn-an"]["torch"]
    print(f"manualbp CNN-AN / PyTorch CNN-AN: {ratio_an:.2f};  manualbp CNN-AN / CNN: "
          f"{med['cnn-an']['manualbp'] / med['cnn']['manualbp']:.2f}, PyTorch: "
          f"{med['cnn-an']['torch'] / med['cnn']['torch']:.2f}")

    peak = peak_matmul_gflops()
    print(f"float32 matmul 2048x2048: NumPy {peak['numpy']:.0f} GFLOP/s, PyTorch {peak['torch']:.0f} GFLOP/s")
    parts_all = {}
    for v in MODELS:
        total, parts, gflops = breakdown(v, np_batches)
        parts_all[v] = {"step_seconds": total, "parts_seconds": parts, "conv_gemm_gflops": gflops}
        rest = total - sum(parts.values())
        shares = ", ".join(f"{k} {s * 1e3:.1f} ms ({s / total:.0%})" for k, s in parts.items())
        print(f"{v:7s} step {total * 1e3:.1f} ms: {shares}, rest {rest * 1e3:.1f} ms ({rest / total:.0%}); "
              f"conv GEMMs at {gflops:.0f} GFLOP/s = {gflops / peak['numpy']:.0%} of NumPy's peak")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"source": source, "threads": threads, "median_step_seconds": med,
                       "steps_per_epoch": STEPS_PER_EPOCH, "matmul_gflops": peak,
                       "breakdown": parts_all, "env": env},
                      f, indent=2)


if __name__ == "__main__":
    main()
