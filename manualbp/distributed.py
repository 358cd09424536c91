"""Data parallelism over MPI (mpi4py): the same hand-written backward on K processes.

Each global batch of B images is cut into K shards, one per rank (process). Every rank runs
Eq. (1), (2) and (3) on its shard; one all-reduce over the model's parameter store (one flat
gradient array, :class:`~manualbp.store.ParameterStore`) then gives every rank

    dL/dtheta = sum_r (B_r / B) dL_r/dtheta,

the gradient of the mean loss over the whole batch: the loss is a mean over samples and Eq. (2)
is linear in the seed ``e`` of each sample, so the shard means weighted by their sizes add up
to the batch mean. The noise levels' gradient Eq. (3), ``sum_i delta_i * eps_i``, is a sum over
samples in the same way and travels in the same array. Every rank then takes the same optimiser
step, so the parameters stay identical; :meth:`Communicator.check_identical` verifies that with
a digest every epoch. See docs/distributed.md.

Batch norm uses each rank's batch statistics in training (as PyTorch's DistributedDataParallel
does by default); its running statistics are averaged over the ranks before evaluation and
checkpoints (:meth:`Communicator.average_running_statistics`).

Noise and augmentation draws are independent per rank and reproducible: each epoch every rank
seeds from ``(seed, epoch)`` and draws the shuffle (the same on all ranks), then rank ``r > 0``
continues from its own stream ``(seed, epoch, r)`` (:meth:`Communicator.own_stream`); rank 0
keeps the shared one, so one process gives the run it gives without MPI.
"""
import ctypes
import hashlib
import os
import sys
import time

#: How the gradient all-reduce moves arrays (the run log names it): NumPy arrays through MPI;
#: CuPy arrays through a CUDA-aware MPI, else CuPy's NCCL, else copied to the host and back.
TRANSPORTS = PLAIN_MPI, CUDA_AWARE_MPI, NCCL, HOST_COPIES = "mpi", "cuda-aware mpi", "nccl", "mpi via host copies"

#: What MPI launchers (MPICH's Hydra, Open MPI) tell each process they start: its rank, the
#: number of ranks of the job, and how many of them run on this machine.
LAUNCHER_VARIABLES = {"rank": ("PMI_RANK", "OMPI_COMM_WORLD_RANK"), "ranks": ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"),
                      "local ranks": ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")}

_active = None                 # the communicator of this process once :func:`connect` made it


def launched(what="ranks"):
    """What the MPI launcher told this process, read without starting MPI: its ``"rank"``, the
    job's ``"ranks"`` or the ``"local ranks"`` on this machine (outside mpiexec: rank 0 of 1)."""
    for name in LAUNCHER_VARIABLES[what]:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0 if what == "rank" else 1


class DistributedError(RuntimeError):
    """MPI is missing, or the ranks disagree (parameters, settings)."""


def connect():
    """The communicator of this MPI job (``mpiexec -n K``); one per process. From then on an
    exception on any rank ends the whole job with its message (:func:`abort`) instead of
    leaving the other ranks waiting in a collective."""
    global _active
    if _active is None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise DistributedError("--distributed needs mpi4py and an MPI library: "
                                   "pip install -e '.[mpi]', then run under mpiexec -n K") from None
        _active = Communicator(MPI.COMM_WORLD, MPI)
        hook = sys.excepthook

        def abort_on_error(kind, value, traceback):
            hook(kind, value, traceback)
            abort(1)
        sys.excepthook = abort_on_error
    return _active


def active():
    """The communicator made by :func:`connect`, or ``None`` in a run without MPI."""
    return _active


#: Seconds a failing rank waits before it ends the job, so that mpiexec forwards its message.
ABORT_GRACE_S = 2.0


def abort(code):
    """End every rank of the job with exit status ``code`` when this process is part of one
    (after a rank printed its error); a run without MPI is left alone. mpiexec forwards each
    rank's output on its own schedule and drops what it has not forwarded when the job is
    killed, so the rank waits :data:`ABORT_GRACE_S` for its message to reach the terminal."""
    if _active is not None and _active.size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
        _active.comm.Abort(code)


class Communicator:
    """The ranks of an MPI job, and the few collectives data parallelism needs."""

    def __init__(self, comm, mpi):
        self.comm, self.MPI = comm, mpi
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.is_root = self.rank == 0
        self.transport = None          # chosen by the first :meth:`transport_for`
        self._nccl = None

    def __repr__(self):
        return f"Communicator(rank {self.rank} of {self.size})"

    # --- who does what ----------------------------------------------------------------------
    def shard(self, n):
        """This rank's contiguous part of ``n`` items, a slice: sizes differ by at most one, the
        first ``n % K`` ranks taking one more (a rank may get none when ``n < K``)."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def own_stream(self, bk, key):
        """Give rank ``r > 0`` its own random stream ``(*key, r)``; rank 0 keeps the current one."""
        if self.rank:
            bk.seed([*key, self.rank])

    # --- collectives ------------------------------------------------------------------------
    def allreduce(self, bk, array):
        """Sum ``array`` (a backend array) over the ranks, in place; every rank gets the same sum."""
        if self.size == 1:
            return array
        transport = self.transport_for(bk)
        if transport == NCCL:
            self._nccl_allreduce(bk, array)
        elif transport in (PLAIN_MPI, CUDA_AWARE_MPI):
            bk.synchronize()                                   # MPI reads the memory directly
            self.comm.Allreduce(self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        else:
            host = bk.to_host(array)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            array[...] = bk.asarray(host, dtype=array.dtype)
        return array

    def sum(self, values):
        """The sums over the ranks of a list of host numbers (one small collective)."""
        if self.size == 1:
            return list(values)
        return [sum(column) for column in zip(*self.comm.allgather(list(values)))]   # rank order

    def gather(self, value):
        """Every rank's ``value`` (any JSON-like object), in rank order, on every rank."""
        return self.comm.allgather(value)

    def barrier(self):
        self.comm.Barrier()

    # --- the model ----------------------------------------------------------------------------
    def average_gradients(self, model, share):
        """Weight this rank's gradients by ``share`` (its shard's fraction of the batch) and sum
        them over the ranks: one all-reduce of the parameter store's flat ``grad``, after which
        every layer's ``grads`` hold the batch gradient (sigma's Eq. 3 and mu's included)."""
        grad = model.parameter_store().grad                 # every layer's grads are views of it
        if share != 1:
            grad *= share
        self.allreduce(model.bk, grad)

    def average_running_statistics(self, model):
        """Replace every batch-norm running statistic by its mean over the ranks (one
        all-reduce over all of them packed into one array)."""
        arrays = [m.buffers[k] for _, m in model.modules() for k in getattr(m, "running_statistics", ())]
        if not arrays or self.size == 1:
            return
        xp = model.xp
        flat = xp.concatenate([a.reshape(-1) for a in arrays])
        self.allreduce(model.bk, flat)
        flat /= self.size
        start = 0
        for a in arrays:
            a[...] = flat[start:start + a.size].reshape(a.shape)
            start += a.size

    def check_identical(self, model, when):
        """Raise :class:`DistributedError` on every rank unless all ranks hold bit-identical
        parameters and buffers (a SHA-256 digest of each rank's, compared); ``when`` names the
        moment for the message."""
        digest = hashlib.sha256()
        for name, array in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(model.bk.to_host(array).tobytes())
        digests = self.gather(digest.hexdigest()[:16])
        if len(set(digests)) > 1:
            raise DistributedError(f"the ranks' parameters differ {when} (digests by rank: {', '.join(digests)}): "
                                   "the ranks ran different code, data or settings")

    # --- CuPy -----------------------------------------------------------------------------------
    def transport_for(self, bk):
        """How :meth:`allreduce` moves arrays of ``bk`` (one of :data:`TRANSPORTS`): chosen on the
        first call, collectively, as the first that every rank's MPI and CuPy offer."""
        if self.transport is None:
            self.transport = self._choose_transport(bk)
        return self.transport

    def _choose_transport(self, bk):
        if bk.name == "numpy":
            return PLAIN_MPI
        if all(self.gather(mpi_has_cuda())):
            return CUDA_AWARE_MPI
        if self._nccl_ready(bk):
            return NCCL
        return HOST_COPIES

    def _nccl_ready(self, bk):
        """Set up CuPy's NCCL communicator over the ranks when every rank has NCCL (its set-up
        is collective); whether it did."""
        from importlib import import_module
        try:
            nccl = import_module(bk.xp.__name__ + ".cuda.nccl")
            usable = getattr(nccl, "available", True)
        except ImportError:
            usable = False
        if not all(self.gather(usable)):
            return False
        uid = self.comm.bcast(nccl.get_unique_id() if self.is_root else None)
        self._nccl = (nccl, nccl.NcclCommunicator(self.size, uid, self.rank))
        return True

    def _nccl_allreduce(self, bk, array):
        nccl, comm = self._nccl
        kinds = {"float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        stream = bk.xp.cuda.get_current_stream().ptr
        comm.allReduce(array.data.ptr, array.data.ptr, array.size, kinds[array.dtype.name], nccl.NCCL_SUM, stream)


def mpi_has_cuda():
    """Whether the MPI library in this process reads CUDA device memory itself
    (``MPIX_Query_cuda_support``, offered by MPICH and Open MPI; ``False`` when it is absent)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libmpi" in line and "/" in line})
        return any(getattr(ctypes.CDLL(path), "MPIX_Query_cuda_support", lambda: 0)() == 1 for path in paths)
    except OSError:
        return False
