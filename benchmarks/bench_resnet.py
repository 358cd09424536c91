"""One training step of ResNet18 (and ResNet34) in manualbp against the same model in PyTorch,
side by side in one run, as a ratio manualbp / PyTorch (below 1: manualbp is faster).

    python benchmarks/bench_resnet.py                   # NumPy vs PyTorch CPU: ResNet18, batch 32
    python benchmarks/bench_resnet.py --backend cupy    # CuPy vs PyTorch CUDA: ResNet18 and 34
    python benchmarks/bench_resnet.py --kernels reference   # manualbp's reference layers

A step is forward, cross-entropy, backward and the Adam update (lr 1e-3, weight decay 1e-4; for
learned noise also the Eq. (7) update of sigma). ResNet18 gets 32x32 inputs and the CIFAR-10
head (FC 256 -> 128 -> 10), ResNet34 64x64 inputs and the Tiny-ImageNet head (FC 1024 -> 512 ->
256 -> 200). Both engines run float32 on the same device and the same random batch; PyTorch
uses as many CPU threads as the machine has and, on the GPU, no TF32 (CuPy computes in full
float32). Rounds alternate between the engines; each reports the median step time, and the
ratio is the median over rounds of the two adjacent rounds' ratio (robust to a machine whose load
changes during the run).
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from manualbp import get_backend
from manualbp.experiments import add_kernels_argument, make_optimizers
from manualbp.layers import SoftmaxCrossEntropy
from manualbp.zoo import RESNET_SETUPS, RESNET_SUFFIXES, resnet18, resnet34
from common import same_threads, torch_train_step

MODELS = {"resnet18": (resnet18, (2, 2, 2, 2), "cifar10"), "resnet34": (resnet34, (3, 4, 6, 3), "tiny-imagenet")}


class TorchResNet(torch.nn.Module):
    """The same ResNet in PyTorch: 3x3 stem (stride 2 for 64x64 inputs), basic blocks, global
    average pooling, the paper's FC head; noise ``sigma * eps (+ mu)`` where the variant puts it."""

    def __init__(self, blocks, dataset, suffix, width=64):
        super().__init__()
        setup = RESNET_SETUPS[dataset]
        size, self.conv_mode, self.fc_mode = setup["input_size"], *RESNET_SUFFIXES[suffix]
        stem_stride = 2 if size >= 64 else 1
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3, stem_stride, 1, bias=False),
                                        torch.nn.BatchNorm2d(width), torch.nn.ReLU())
        size //= stem_stride
        self.blocks = torch.nn.ModuleList()
        learned = self.conv_mode == "learned"
        self.sigma, self.mu = torch.nn.ParameterList(), torch.nn.ParameterList()
        channels = width
        for stage, count in enumerate(blocks):
            out = width * 2 ** stage
            for b in range(count):
                stride = 2 if stage > 0 and b == 0 else 1
                size = (size - 1) // stride + 1
                block = torch.nn.ModuleDict({
                    "conv1": torch.nn.Conv2d(channels, out, 3, stride, 1, bias=False),
                    "bn1": torch.nn.BatchNorm2d(out),
                    "conv2": torch.nn.Conv2d(out, out, 3, 1, 1, bias=False),
                    "bn2": torch.nn.BatchNorm2d(out)})
                if stride != 1 or channels != out:
                    block["shortcut"] = torch.nn.Sequential(torch.nn.Conv2d(channels, out, 1, stride, bias=False),
                                                            torch.nn.BatchNorm2d(out))
                self.blocks.append(block)
                if self.conv_mode != "off":
                    self.sigma.append(torch.nn.Parameter(torch.ones(out, size, size), requires_grad=learned))
                if learned:
                    self.mu.append(torch.nn.Parameter(torch.zeros(out, size, size)))
                channels = out
        sizes = (channels,) + tuple(setup["hidden"]) + (setup["classes"],)
        self.fc = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc_sigma = torch.nn.ParameterList(
            torch.nn.Parameter(torch.ones(b), requires_grad=self.fc_mode == "learned")
            for b in sizes[1:-1]) if self.fc_mode != "off" else torch.nn.ParameterList()

    def forward(self, x):
        v = self.stem(x)
        for i, block in enumerate(self.blocks):
            out = F.relu(block["bn1"](block["conv1"](v)))
            out = block["conv2"](out)
            if self.conv_mode != "off":
                out = out + self.sigma[i] * torch.randn_like(out)
            if self.conv_mode == "learned":
                out = out + self.mu[i]
            out = block["bn2"](out)
            v = F.relu(out + (block["shortcut"](v) if "shortcut" in block else v))
        v = v.mean(dim=(2, 3))
        for i, fc in enumerate(self.fc):
            v = fc(v)
            if i < len(self.fc) - 1:
                if self.fc_mode != "off":
                    v = v + self.fc_sigma[i] * torch.randn_like(v)
                v = F.relu(v)
        return v


def torch_stepper(name, suffix, x, y, device):
    _, blocks, dataset = MODELS[name]
    model = TorchResNet(blocks, dataset, suffix).to(device)
    sigma = [p for n, p in model.named_parameters() if n.startswith(("sigma", "fc_sigma")) and p.requires_grad]
    weights = [p for n, p in model.named_parameters() if not n.startswith(("sigma", "fc_sigma"))]
    opt = torch.optim.Adam(weights, lr=1e-3, weight_decay=1e-4)
    sigma_opt = torch.optim.Adam(sigma, lr=1e-3) if sigma else None
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step():
        torch_train_step(model, x, y, opt, sigma_opt, sigma)
    return step


def manualbp_stepper(name, suffix, x, y, backend, kernels):
    build, _, dataset = MODELS[name]
    bk = get_backend(backend, "float32", 0, kernels)
    model = build(bk, name + suffix, dataset)
    optimizers, _ = make_optimizers(model, lr=1e-3, weight_decay=1e-4)
    loss = SoftmaxCrossEntropy(bk)
    x, y = bk.asarray(x), bk.asarray(y, dtype="int64")

    def step():
        loss.forward(model.forward(x), y)
        model.backward(loss.backward(), input_grad=False)
        for opt in optimizers:
            if opt is not None:
                opt.step()
    return step, bk.synchronize


def timed(step, sync, steps):
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - t0) / steps


def bench(name, suffix, batch, backend, kernels, rounds, steps):
    dataset = MODELS[name][2]
    size, classes = RESNET_SETUPS[dataset]["input_size"], RESNET_SETUPS[dataset]["classes"]
    rng = np.random.default_rng(0)
    x = rng.random((batch, 3, size, size), dtype=np.float32)
    y = rng.integers(0, classes, batch).astype(np.int64)
    device = "cuda" if backend == "cupy" else "cpu"
    ours, sync = manualbp_stepper(name, suffix, x, y, backend, kernels)
    theirs = torch_stepper(name, suffix, x, y, device)
    torch_sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(2):                                     # warm-up: buffers, kernels, caches
        ours()
        theirs()
    times = {"manualbp": [], "torch": []}
    for _ in range(rounds):
        times["manualbp"].append(timed(ours, sync, steps))
        times["torch"].append(timed(theirs, torch_sync, steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = statistics.median(m / t for m, t in zip(times["manualbp"], times["torch"]))
    return {"model": name + suffix, "batch": batch, "input": size, **med, "ratio": ratio}


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
    if gpu:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU, {same_threads()} threads"
    print(f"{args.backend} ({args.kernels} kernels) vs torch {torch.__version__} on {device}; "
          f"numpy {np.__version__}; batch {batch}; median of {args.rounds} rounds of {steps} steps")
    print(f"{'model':14s} {'input':>5s} {'manualbp s':>11s} {'torch s':>8s} {'ratio':>6s}")
    results = []
    for model in models:
        name = model[:8]
        r = bench(name, model[8:], batch, args.backend, args.kernels, args.rounds, steps)
        results.append(r)
        print(f"{r['model']:14s} {r['input']:5d} {r['manualbp']:11.3f} {r['torch']:8.3f} {r['ratio']:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": args.backend, "kernels": args.kernels, "device": device, "results": results},
                      f, indent=2)


if __name__ == "__main__":
    main()
