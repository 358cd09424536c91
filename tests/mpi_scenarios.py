"""Scenarios of data-parallel training, run by tests/test_distributed.py under ``mpiexec -n K``:

    mpiexec -n 2 python tests/mpi_scenarios.py SCENARIO OUT_DIR

Each rank runs the scenario; rank 0 writes what the test compares to ``OUT_DIR/<scenario>.npz``
(and prints nothing else). The data and models are small and seeded: the test rebuilds them
in one process to compare.
"""
import os
import sys

import numpy as np

from manualbp import distributed, get_backend
from manualbp.layers import BatchNorm2d, Conv2d, Flatten, GaussianNoise, Linear, ReLU
from manualbp.model import Sequential, named_eps
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import mlp

BATCH = 12            # the global batch: shards of 6 on 2 ranks
SIZES = (20, 16, 10)
TEST_IMAGES = 101     # odd: the ranks' shards of the test set differ in size


def data(n=60, features=SIZES[0], seed=1):
    """Seeded rows and labels (host arrays)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)), rng.integers(0, SIZES[-1], size=n)


def images(n=48, seed=2):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 8, 8)), rng.integers(0, 10, size=n)


def mlp_model(bk, variant):
    bk.seed([0, 7])
    return mlp(bk, variant, "relu", SIZES)


def bn_model(bk):
    """Convolution, batch norm, learned noise on the feature map, dense head."""
    bk.seed([0, 8])
    return Sequential(bk, [("conv", Conv2d(bk, 1, 4, 3, padding=1)), ("bn", BatchNorm2d(bk, 4)),
                           ("act", ReLU(bk)), ("noise", GaussianNoise(bk, (4, 8, 8))),
                           ("flat", Flatten(bk)), ("fc", Linear(bk, 256, 10))], input_shape=(1, 8, 8))


def trainer(model, comm, optimizers=None, **options):
    opts = make_optimizers(model)[0] if optimizers is None else optimizers
    return Trainer(model, opts, batch_size=BATCH, seed=3, progress=False, comm=comm, **options)


def on_device(bk, x, y):
    return bk.asarray(x), bk.asarray(y, dtype="int64")


def host(model):
    return {k: model.bk.to_host(v) for k, v in model.state_dict().items()}


#: Plain-MLP runs compared with one process: (training images, batches): 3 full batches; and a
#: whole epoch of 25 images, whose last batch of 1 leaves the second rank without images.
EQUIVALENCE = {"equivalence": (60, 3), "uneven": (25, None)}


def equivalence(comm, bk, out, name="equivalence"):
    """Plain MLP (no noise): the steps of :data:`EQUIVALENCE`, then an evaluation."""
    n, limit = EQUIVALENCE[name]
    model = mlp_model(bk, "mlp")
    t = trainer(model, comm, limit_batches=limit)
    x, y = on_device(bk, *data(n))
    loss = t.train_epoch(x, y)
    tx, ty = on_device(bk, *data(TEST_IMAGES, seed=4))
    test_loss, test_acc = t.evaluate(tx, ty)
    return {"loss": loss, "test_loss": test_loss, "test_accuracy": test_acc, **host(model)}


def uneven(comm, bk, out):
    return equivalence(comm, bk, out, "uneven")


def sigma_gradient(comm, bk, out):
    """MLPN: one forward and backward of the global batch, no update: the all-reduced gradients,
    and every rank's batch indices and noise draws to replay."""
    model = mlp_model(bk, "mlpn")
    t = trainer(model, comm, optimizers=[])
    x, y = on_device(bk, *data())
    bk.seed([3, 0])
    idx = t.batches(len(x))[0]
    comm.own_stream(bk, [3, 0])
    part = idx[comm.shard(len(idx))]
    model.train()
    t.step(x[part], y[part], len(part) / len(idx))
    shards = comm.gather({"idx": bk.to_host(part).tolist(),
                          "eps": {k: bk.to_host(v).tolist() for k, v in named_eps(model).items()}})
    result = {f"grad/{k}": bk.to_host(v) for k, v in model.named_gradients().items()}
    for r, shard in enumerate(shards):
        result[f"idx/{r}"] = np.array(shard["idx"])
        result.update({f"eps/{r}/{k}": np.array(v) for k, v in shard["eps"].items()})
    return result


def batch_norm(comm, bk, out):
    """The CNN with batch norm: each rank's running statistics after one epoch, and after
    their average."""
    model = bn_model(bk)
    t = trainer(model, comm, limit_batches=2)
    x, y = on_device(bk, *images())
    t.train_epoch(x, y)
    bn = model.children["bn"]
    before = comm.gather({k: bk.to_host(bn.buffers[k]).tolist() for k in bn.running_statistics})
    comm.average_running_statistics(model)
    result = {f"before/{r}/{k}": np.array(v) for r, b in enumerate(before) for k, v in b.items()}
    result.update({f"after/{k}": bk.to_host(bn.buffers[k]) for k in bn.running_statistics})
    comm.check_identical(model, "after averaging")
    return result


def resume(comm, bk, out):
    """The CNN with batch norm and learned noise: 3 epochs straight, and 1 epoch then a resume
    for 2 more, twice each (the same K and seed give the same bits)."""
    x, y = on_device(bk, *images())
    splits = {"train": (x, y), "val": (x[:16], y[:16]), "test": (x[16:], y[16:])}
    result = {}
    for run in ("straight", "again", "resumed"):
        path = os.path.join(out, f"{run}.npz")
        model = bn_model(bk)
        t = trainer(model, comm, limit_batches=3)
        if run == "resumed":
            t.fit(splits, 1, checkpoint_path=path, log=None)
            comm.barrier()                              # rank 0 has written the checkpoint
            model = bn_model(bk)
            t = trainer(model, comm, limit_batches=3)
            t.fit(splits, 3, checkpoint_path=path, resume=True, log=None)
        else:
            t.fit(splits, 3, checkpoint_path=path, log=None)
        result.update({f"{run}/{k}": v for k, v in host(model).items()})
        result[f"{run}/test_accuracy"] = np.array([h["test_accuracy"] for h in t.history])
        result[f"{run}/train_loss"] = np.array([h["train_loss"] for h in t.history])
    return result


def diverged(comm, bk, out):
    """One rank changes a weight: the digest check must stop every rank."""
    model = mlp_model(bk, "mlp")
    if comm.rank == comm.size - 1:
        model.children["fc1"].params["weight"][0, 0] += 1e-12
    comm.check_identical(model, "in the test")
    return {}


def raises(comm, bk, out):
    """The last rank raises in the middle of training: the job must end, not hang."""
    model = mlp_model(bk, "mlp")
    t = trainer(model, comm)
    x, y = on_device(bk, *data())
    if comm.rank == comm.size - 1:
        original = t.step

        def failing(*args):
            if len(t.history) == 0 and failing.calls == 1:
                raise RuntimeError(f"a failure on rank {comm.rank} only")
            failing.calls += 1
            return original(*args)
        failing.calls = 0
        t.step = failing
    t.train_epoch(x, y)
    return {}


SCENARIOS = {f.__name__: f for f in (equivalence, uneven, sigma_gradient, batch_norm, resume, diverged, raises)}


def main(name, out, dtype="float64"):
    comm = distributed.connect()
    bk = get_backend("numpy", dtype, 0)
    result = SCENARIOS[name](comm, bk, out)
    if comm.is_root:
        np.savez(os.path.join(out, f"{name}.npz"), **result)


if __name__ == "__main__":
    main(*sys.argv[1:])
