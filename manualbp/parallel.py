"""Threads for NumPy's copies, ufuncs and random fills, which run on one core each.

NumPy releases the GIL inside copies, ufuncs and the random generators' fills, so independent
pieces of one large operation run on separate cores when handed to a few threads. Every user
here splits its work into pieces that write disjoint memory and do not depend on how many
threads run them: results are the same bit for bit with one thread or many.
``MANUALBP_NUM_THREADS`` sets the number of threads (``1`` turns threading off). Under
``mpiexec`` the ranks on one machine share its cores: each takes its part of them, for these
threads and OpenBLAS's (:func:`share_cores_among_local_ranks`).

OpenBLAS's threads keep spinning on their cores for a while after each matrix product (about
2^28 cycles by default), and a loop started on threads right after a product then shares those
cores with them: a large noise draw right after a convolution's GEMM took twice as long as on
idle cores. :func:`let_blas_threads_sleep` -- run when ``manualbp`` is imported -- asks OpenBLAS
to put them to sleep at once instead (``OPENBLAS_THREAD_TIMEOUT=1``); see docs/performance.md.
"""
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from .distributed import launched

#: Element count above which the fast kernels (im2col, col2im, pooling, noise, batch norm, the
#: optimisers) split their work.
PARALLEL_MIN_SIZE = 1 << 20
#: Blocks per thread in :func:`parallel_blocks`.
BLOCKS_PER_THREAD = 3
_executor = None             # (ThreadPoolExecutor, its number of workers, the owning process id)


class ThreadCountError(ValueError):
    """``MANUALBP_NUM_THREADS`` is set to something other than a positive integer."""


def let_blas_threads_sleep():
    """Set ``OPENBLAS_THREAD_TIMEOUT=1`` (idle OpenBLAS threads sleep at once instead of
    spinning) unless the environment already sets it. OpenBLAS reads it when NumPy loads it,
    so this acts only when NumPy is not imported yet (``import manualbp`` first); returns
    whether it acted."""
    if "numpy" in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = "1"
    return True


def share_cores_among_local_ranks():
    """Under ``mpiexec`` with several ranks on this machine, give OpenBLAS each rank's share
    of the cores (``OPENBLAS_NUM_THREADS``) unless the environment sets it; acts only before
    NumPy loads OpenBLAS, as :func:`let_blas_threads_sleep`. Returns whether it acted."""
    if launched("local ranks") <= 1 or "numpy" in sys.modules or "OPENBLAS_NUM_THREADS" in os.environ \
            or "OMP_NUM_THREADS" in os.environ:
        return False
    try:
        threads = num_threads()
    except ThreadCountError:      # raised again where the threads are used; the scripts refuse it first
        return False
    os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    return True


def num_threads():
    """``MANUALBP_NUM_THREADS`` if set, else the CPUs this process may run on (shared among
    the ranks of an MPI job on this machine). It is read here, at the first use of the
    threads: a value that is not a positive integer raises :class:`ThreadCountError`, which
    the scripts call for before any work (:func:`manualbp.experiments.cli`)."""
    value = os.environ.get("MANUALBP_NUM_THREADS")
    if value:
        if not value.strip().isdigit() or int(value) < 1:
            raise ThreadCountError(f"MANUALBP_NUM_THREADS={value!r}: expected a positive integer "
                                   "(1 turns manualbp's threads off)")
        return int(value)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                                      # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, launched("local ranks")))


def run_all(calls):
    """Run the zero-argument callables ``calls`` on the thread pool and wait for all of them.

    They are handed out one at a time to whichever thread is free (the caller's thread works
    too), so a core still busy with something else simply takes fewer."""
    global _executor
    calls = list(calls)
    threads = min(num_threads(), len(calls))
    if threads < 2:
        for call in calls:
            call()
        return
    pending = iter(calls)
    lock = threading.Lock()

    def drain():
        while True:
            with lock:
                call = next(pending, None)
            if call is None:
                return
            call()

    if _executor is None or _executor[1] < threads - 1 or _executor[2] != os.getpid():
        # (a new pool after a fork too: the threads of the parent's pool do not exist there)
        _executor = (ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="manualbp"),
                     threads - 1, os.getpid())
    futures = [_executor[0].submit(drain) for _ in range(threads - 1)]
    drain()
    for f in futures:
        f.result()


def parallel_blocks(xp, channels, batch, size, work):
    """Call ``work(channel_slice, batch_slice)`` on blocks that together cover
    ``channels x batch``, split over channels (or over the batch when there are fewer channels
    than blocks), on several threads on NumPy when ``size`` elements are touched. The blocks
    must write disjoint parts of the output. On CuPy, or for small work, one call covers
    everything."""
    if xp.__name__ != "numpy" or size < PARALLEL_MIN_SIZE or num_threads() < 2:
        work(slice(None), slice(None))
        return
    threads = num_threads()
    count = BLOCKS_PER_THREAD * threads
    along_channels = channels >= count
    length = channels if along_channels else batch
    bounds = sorted({length * k // count for k in range(count + 1)})
    blocks = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]
    run_all([(lambda b=b: work(b, slice(None))) if along_channels else (lambda b=b: work(slice(None), b))
             for b in blocks])
