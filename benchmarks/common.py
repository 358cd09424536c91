"""What every benchmark shares: the PyTorch side of a training step (cross-entropy, backward, the
weights' Adam, and for learned noise the Eq. (7) update: Adam on sigma, then the absolute value),
the same thread count for both engines, and the Fashion-MNIST training images."""
import numpy as np
import torch

from manualbp.parallel import num_threads

N_TRAIN = 50000


def torch_train_step(model, x, y, opt, sigma_opt=None, sigmas=()):
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


def training_data(shape=(784,)):
    """The paper's 50,000 training images of Fashion-MNIST (5:1:1 split, seed 0) shaped
    ``(N, *shape)``, int64 labels and the source's name; random images when the data is missing."""
    try:
        from manualbp.data import load_mnist, split_dataset
        x, y = split_dataset(load_mnist("fashion-mnist", download=False), (5, 1, 1), seed=0)["train"]
        return x.reshape(-1, *shape), y.astype(np.int64), "Fashion-MNIST"
    except Exception:
        rng = np.random.default_rng(0)
        return (rng.random((N_TRAIN, *shape), dtype=np.float32), rng.integers(0, 10, N_TRAIN),
                "random images")
