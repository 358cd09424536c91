"""What every benchmark shares: the PyTorch side of a model -- its twin from
:func:`manualbp.verify.to_torch`, with the optimisers of :func:`manualbp.train.make_optimizers` --
and of a training step (cross-entropy, backward, the weights' Adam, and for learned noise the
Eq. (7) update: Adam on sigma, then the absolute value), the same thread count for both engines,
the device PyTorch runs on beside manualbp's backend, timing that waits for queued GPU work (of
steps and of whole epochs), the table cells of a skipped PyTorch side, and the Fashion-MNIST
training images."""
import statistics
import time

import numpy as np
import torch

from manualbp.optim import is_noise_level
from manualbp.parallel import num_threads
from manualbp.verify import to_torch

N_TRAIN = 50000


def torch_twin(model, lr=1e-3, weight_decay=1e-4, sigma_lr=1e-3, device="cpu", wrap=None):
    """The PyTorch side of ``model`` (a manualbp model, before it trains): its float32 twin on
    ``device`` and a ``step(x, y)`` of :func:`torch_train_step` with the optimisers the manualbp
    side gets: Adam on the weights (``lr``, ``weight_decay``), and for learned sigma a separate
    Adam (``sigma_lr``, no weight decay) followed by the absolute value. ``wrap``: what the
    step runs instead of the twin itself (e.g. ``DistributedDataParallel``)."""
    twin = to_torch(model, "float32", device)
    params = dict(twin.named_parameters())
    sigmas = [p for name, p in params.items() if is_noise_level(name)]
    opt = torch.optim.Adam([p for name, p in params.items() if not is_noise_level(name)], lr=lr,
                           weight_decay=weight_decay)
    sigma_opt = torch.optim.Adam(sigmas, lr=sigma_lr) if sigmas else None

    runs = twin if wrap is None else wrap(twin)

    def step(x, y):
        return torch_train_step(runs, x, y, opt, sigma_opt, sigmas)
    return twin, step


def torch_train_step(model, x, y, opt, sigma_opt=None, sigmas=()):
    """One training step of a PyTorch ``model``; returns the batch loss."""
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    if sigma_opt:
        sigma_opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sigma_opt:
        sigma_opt.step()
        with torch.no_grad():                          # Eq. (7): absolute value after Adam
            for s in sigmas:
                s.abs_()
    return loss


def same_threads():
    """Give PyTorch as many threads as manualbp's loops and BLAS have (``MANUALBP_NUM_THREADS``,
    else the CPUs this process may use); returns that number."""
    threads = num_threads()
    torch.set_num_threads(threads)
    return threads


def torch_device_for(backend):
    """The device of the PyTorch side beside manualbp's ``backend``: ``"cpu"`` beside NumPy; beside
    CuPy ``"cuda"`` (without TF32: CuPy computes in full float32), or ``None`` when this PyTorch has
    no CUDA -- the PyTorch side is then skipped, and a printed line says so."""
    if backend == "numpy":
        return "cpu"
    if torch.cuda.is_available():
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        return "cuda"
    print(f"torch {torch.__version__} has no CUDA here: the PyTorch side is skipped (manualbp on "
          f"the GPU alone); a CUDA build of PyTorch gives the ratios")
    return None


def torch_synchronize(device):
    """Wait for PyTorch's queued work on ``device``; nothing to do on the CPU."""
    if device == "cuda":
        torch.cuda.synchronize()


def gpu_name():
    """The name of CuPy's current GPU."""
    import cupy
    return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()


def timed(run, sync, repeats=1):
    """Mean seconds of ``repeats`` calls of ``run()``, with ``sync()`` (waiting for the engine's
    queued GPU work) before and after, so that all of that work is measured."""
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        run()
    sync()
    return (time.perf_counter() - t0) / repeats


def time_steps(step, batches, sync):
    """Mean seconds of ``step(x, y)`` over ``batches``, timed as :func:`timed` does."""
    def run():
        for x, y in batches:
            step(x, y)
    return timed(run, sync) / len(batches)


def manualbp_epoch(trainer, x, y):
    """Seconds of one :meth:`~manualbp.train.Trainer.train_epoch` over ``x, y`` (on the device):
    its shuffling, batching and steps, timed as :func:`timed` does."""
    return timed(lambda: trainer.train_epoch(x, y, epoch=0), trainer.bk.synchronize)


def torch_epoch(step, x, y, batch, seed, device):
    """Seconds of one epoch of the PyTorch training ``step`` over ``x, y`` (on ``device``) in
    batches of ``batch`` of a permutation drawn on the device from ``seed``."""
    torch.manual_seed(seed)

    def epoch():
        perm = torch.randperm(len(x), device=device)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            step(x[idx], y[idx])
    return timed(epoch, lambda: torch_synchronize(device))


def on_devices(bk, device, x, y):
    """Host ``x, y`` on manualbp's device and on PyTorch's (``None, None`` without PyTorch),
    moved once, before timing."""
    mine = bk.asarray(x), bk.asarray(y, dtype="int64")
    return mine, (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)) if device else (None, None)


def medians(times):
    """``{model: {engine: median seconds}}`` of ``{model: {engine: [seconds, ...]}}``."""
    return {v: {k: statistics.median(t) for k, t in engines.items()} for v, engines in times.items()}


def ratio(mine, theirs):
    """manualbp's figure over PyTorch's; ``None`` when PyTorch was not run."""
    return None if theirs is None else mine / theirs


def cell(value, width, spec, scale=1):
    """``value * scale`` formatted by ``spec`` and right-aligned to ``width``; ``"-"`` when there
    is no value (the PyTorch side skipped)."""
    return f"{'-' if value is None else format(value * scale, spec):>{width}}"


def training_data(shape=(784,)):
    """The paper's 50,000 training images of Fashion-MNIST (5:1:1 split, seed 0) shaped
    ``(N, *shape)``, int64 labels and the source's name; random images when the data is missing."""
    try:
        from manualbp.data import split_dataset
        from manualbp.datasets import DATASETS
        data = DATASETS["fashion-mnist"]
        x, y = split_dataset(data.load(download=False), data.split, seed=0)["train"]
        return (x.reshape(-1, *shape) / np.float32(255)).astype(np.float32), y.astype(np.int64), "Fashion-MNIST"
    except Exception:
        rng = np.random.default_rng(0)
        return (rng.random((N_TRAIN, *shape), dtype=np.float32), rng.integers(0, 10, N_TRAIN),
                "random images")
