"""Data parallelism on one machine: training steps per second of one process with T threads
against T processes with one thread each (``mpiexec -n T``, :mod:`manualbp.distributed`), for
manualbp and, side by side in the same run, PyTorch (DistributedDataParallel over gloo), and the
all-reduce's share of a step.

    python benchmarks/bench_distributed.py [--ranks 2] [--models mlpn cnn-an] [--steps 40]
        [--repeats 3] [--kernels fast|reference] [--json out.json]

Each step trains on a global batch of 128 random images (a rank takes its shard of it): forward,
backward, one all-reduce of every gradient, the weights' Adam and the Eq. (7) update. The
all-reduce's share is the time of that all-reduce alone (the same number of floats, timed apart)
over the time of a step. The PyTorch side is each model's twin (:func:`common.torch_twin`);
DistributedDataParallel overlaps its all-reduce with the backward pass, manualbp runs it after.
The two set-ups run ``--repeats`` times, alternating, and each figure is the median over them
(a machine's speed drifts between minutes).
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from manualbp import distributed, get_backend
from manualbp.experiments import add_kernels_argument
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import cnn, mlp
from common import torch_twin

BATCH = 128
MODELS = {"mlpn": (lambda bk: mlp(bk, "mlpn", "relu"), (784,)),
          "cnn-an": (lambda bk: cnn(bk, "cnn-an"), (1, 28, 28))}


def timed(step, batches, comm, rounds=5):
    """Median seconds per call of ``step(x, y)`` over ``rounds`` passes over ``batches`` (after
    one warm-up pass), the ranks of ``comm`` starting each pass together."""
    per_round = []
    for r in range(rounds + 1):
        comm.barrier()
        t0 = time.perf_counter()
        for x, y in batches:
            step(x, y)
        per_round.append((time.perf_counter() - t0) / len(batches))
    return statistics.median(per_round[1:])


def worker(args):
    """One configuration (this process, or every rank of an mpiexec job): prints JSON on rank 0."""
    comm = distributed.connect()
    torch.set_num_threads(args.threads)
    part = comm.shard(BATCH)
    share = (part.stop - part.start) / BATCH
    ddp = None
    if comm.size > 1:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(comm.comm.bcast(free_port() if comm.is_root else None))
        torch.distributed.init_process_group("gloo", rank=comm.rank, world_size=comm.size)
        ddp = torch.nn.parallel.DistributedDataParallel
    torch.manual_seed(comm.rank)                       # the twins' noise draws, per rank
    rng = np.random.default_rng(0)
    results = {}
    for name in args.models:
        build, shape = MODELS[name]
        model = build(get_backend("numpy", "float32", 0, args.kernels))
        _, torch_step = torch_twin(model, wrap=ddp)
        optimizers, _ = make_optimizers(model)
        trainer = Trainer(model, optimizers, batch_size=BATCH, progress=False, comm=comm)
        model.train()
        x = rng.random((args.steps, BATCH, *shape), dtype=np.float32)[:, part]
        y = rng.integers(0, 10, (args.steps, BATCH))[:, part]
        ours = [(model.bk.asarray(a), model.bk.asarray(b, dtype="int64")) for a, b in zip(x, y)]
        theirs = [(torch.from_numpy(a), torch.from_numpy(b)) for a, b in zip(x, y)]
        step = timed(lambda a, b: trainer.step(a, b, share), ours, comm)
        torch_step_s = timed(torch_step, theirs, comm)
        grad = model.parameter_store().grad
        floats = torch.zeros(grad.size)
        reduce_s = timed(lambda *_: comm.allreduce(model.bk, grad), [(None, None)] * 20, comm)
        torch_reduce_s = timed(lambda *_: torch.distributed.all_reduce(floats), [(None, None)] * 20, comm) \
            if ddp else 0.0
        results[name] = {"manualbp_step_s": step, "torch_step_s": torch_step_s, "floats": int(grad.size),
                         "manualbp_allreduce_s": reduce_s, "torch_allreduce_s": torch_reduce_s}
    if ddp:
        comm.barrier()
        torch.distributed.destroy_process_group()      # gloo's threads joined before exit, not killed
    if comm.is_root:
        print(json.dumps({"ranks": comm.size, "threads": args.threads, "models": results}))


def finish_worker():
    """End a worker at once after MPI's finalisation: its output is written, and the teardown of
    the interpreter -- where torch's and gloo's threads sometimes abort the process ("terminate
    called without an active exception") -- is skipped."""
    from mpi4py import MPI
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.Finalize()
    os._exit(0)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(ranks, threads, args):
    """Run :func:`worker` on ``ranks`` processes of ``threads`` threads each; its JSON."""
    env = dict(os.environ, MANUALBP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--worker", "--threads", str(threads), "--steps", str(args.steps),
               "--kernels", args.kernels, "--models", *args.models]
    if ranks > 1:
        command = [shutil.which("mpiexec"), "-n", str(ranks), *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode:
        sys.exit(f"the run on {ranks} process(es) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2, help="processes (and threads of the one process)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--steps", type=int, default=40, help="batches per timed pass")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each set-up, alternating")
    add_kernels_argument(parser)
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        finish_worker()
    if shutil.which("mpiexec") is None:
        sys.exit("bench_distributed.py needs mpiexec: pip install -e '.[mpi]'")
    repeats = [{"one": launch(1, args.ranks, args), "many": launch(args.ranks, 1, args)}
               for _ in range(args.repeats)]
    runs = {setup: {"models": {name: {key: statistics.median(r[setup]["models"][name][key] for r in repeats)
                                      for key in repeats[0][setup]["models"][name]} for name in args.models}}
            for setup in ("one", "many")}
    runs.update(kernels=args.kernels, repeats=repeats)
    print(f"global batch {BATCH}; one process with {args.ranks} threads against {args.ranks} processes with "
          f"1 thread each; kernels: {args.kernels}; torch {torch.__version__} (DistributedDataParallel, gloo), "
          f"numpy {np.__version__}")
    print(f"{'model':7s} {'engine':9s} {'1 proc steps/s':>15s} {f'{args.ranks} procs steps/s':>16s} "
          f"{'speed-up':>9s} {'all-reduce share':>17s}")
    for name in args.models:
        one, many = runs["one"]["models"][name], runs["many"]["models"][name]
        for engine in ("manualbp", "torch"):
            a, b = one[f"{engine}_step_s"], many[f"{engine}_step_s"]
            reduce_share = many[f"{engine}_allreduce_s"] / b
            print(f"{name:7s} {engine:9s} {1 / a:15.1f} {1 / b:16.1f} {a / b:9.2f} {reduce_share:17.1%}")
        print(f"{name:7s} step time ratio manualbp / torch: {one['manualbp_step_s'] / one['torch_step_s']:.2f} "
              f"(1 process), {many['manualbp_step_s'] / many['torch_step_s']:.2f} ({args.ranks} processes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(runs, f, indent=2)


if __name__ == "__main__":
    main()
