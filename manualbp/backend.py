"""The backend: one object that knows the array module, the dtype, the random generator
and how arrays move between host and device.

Of the modules that compute on the device -- layers, kernels, model, optimisers, training,
attacks -- this is the only one that imports NumPy or CuPy: each gets its array module as
``backend.xp``, so the same code runs on the CPU (NumPy) and on an NVIDIA GPU (CuPy). Host-side
modules (data loading, checkpoints, L-BFGS's SciPy interface, corruptions, plots, evaluation's
counts) use NumPy on host copies.
"""
import numpy

from .parallel import run_all

BACKENDS = ("numpy", "cupy")
DTYPES = ("float32", "float64")
KERNELS = ("fast", "reference")


class BackendError(RuntimeError):
    """A backend was asked for that this machine cannot provide."""


def _import_cupy():
    """Return the cupy module with a usable GPU, or raise one clear BackendError."""
    try:
        import cupy
    except ImportError:
        raise BackendError(
            "backend 'cupy' needs CuPy, which is not installed: pip install -e '.[cuda12]' "
            "(CUDA 12) or '.[cuda13]' (CUDA 13), or use --backend numpy") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken
        raise BackendError(f"backend 'cupy': CuPy is installed but no GPU is usable ({err}); "
                           "use --backend numpy") from None
    if count == 0:
        raise BackendError("backend 'cupy': CuPy is installed but sees no GPU; use --backend numpy")
    return cupy


class Backend:
    """Array module, working dtype, seeded random generator and host/device transfer.

    Parameters
    ----------
    name : "numpy" or "cupy".
    dtype : "float32" (default, for training) or "float64" (for gradient checks).
    seed : seed of the generator that draws initial weights and every noise sample ``eps``.
    kernels : ``"fast"`` (default): each op (:mod:`manualbp.ops`) runs the fast pair registered
        for this backend where it has one, and optimisers step the flat parameter store on
        threads; ``"reference"``: every op runs its reference pair, every optimiser its
        per-parameter update (:meth:`table` lists what runs).
    device : the GPU that CuPy uses, counted modulo the GPUs this process sees (rank ``r`` of
        a data-parallel job passes ``r``); ``None``: CuPy's current device. NumPy ignores it.
    """

    #: Independent streams (children of the seed) that fill large float32 draws in pieces.
    NOISE_STREAMS = 8
    #: Draws per stream piece at least: smaller draws come from one stream.
    STREAM_PIECE = 1 << 17

    def __init__(self, name="numpy", dtype="float32", seed=0, kernels="fast", device=None):
        if name not in BACKENDS:
            raise BackendError(f"unknown backend {name!r}: expected one of {', '.join(BACKENDS)}")
        if str(dtype) not in DTYPES:
            raise BackendError(f"unsupported dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        if kernels not in KERNELS:
            raise BackendError(f"unknown kernels {kernels!r}: expected one of {', '.join(KERNELS)}")
        self.name = name
        self.xp = numpy if name == "numpy" else _import_cupy()
        if name == "cupy" and device is not None:
            self.xp.cuda.Device(device % self.xp.cuda.runtime.getDeviceCount()).use()
        self.dtype = self.xp.dtype(str(dtype))
        self.kernels = kernels
        self._pending = {}                 # deferred value checks: message -> device flag
        self.seed(seed)

    def __repr__(self):
        return f"Backend({self.name!r}, dtype={self.dtype.name!r}, kernels={self.kernels!r})"

    def kernel(self, op):
        """``(forward, backward)`` of ``op`` (:mod:`manualbp.ops`) that run here: its fast pair
        registered for this backend with ``kernels="fast"``, else its reference pair."""
        return op.pair(self.name, self.kernels)

    def table(self):
        """Which function runs for each op here: ``{op name: (forward, backward) qualified
        names}`` -- the visible table of this backend and kernel setting."""
        from .ops import OPS
        return {op.name: tuple(f"{f.__module__}.{f.__qualname__}" for f in self.kernel(op)) for op in OPS}

    def seed(self, seed):
        """Restart the random generator from ``seed`` (an int or a sequence of ints)."""
        seq = numpy.random.SeedSequence(seed)
        if self.name == "numpy":
            self.rng = numpy.random.Generator(numpy.random.PCG64(seq))
            self._streams = [numpy.random.Generator(numpy.random.PCG64(s))
                             for s in seq.spawn(self.NOISE_STREAMS)]
            self._uniforms = [None] * self.NOISE_STREAMS
        else:                             # eps is drawn in place by a Generator (it has out=)
            first, second = (int(s) for s in seq.generate_state(2))
            if hasattr(self, "rng"):      # reseeded in place: replacing it frees cuRAND's state
                self.rng.seed(first)
            else:
                self.rng = self.xp.random.RandomState(first)
            self._normals = self.xp.random.default_rng(second)

    # --- random draws, always in the working dtype -----------------------------------------
    def normal_like(self, v):
        """``eps ~ N(0, 1)`` of ``v``'s shape for a noise layer (Eq. 1), in the layout its path
        keeps: with ``kernels="fast"`` in ``v``'s memory layout (the batch-innermost or
        channel-major feature maps of the fast convolutions), with ``"reference"`` in C order.
        A C-ordered ``v`` (every dense layer) gets the same draws either way."""
        return self.normal(v.shape, out=self.xp.empty_like(v) if self.kernels == "fast" else None)

    def normal(self, shape, out=None):
        """Standard normal draws ``eps ~ N(0, 1)`` in the working dtype; written into ``out`` when
        it has that shape and dtype and is dense (no gaps or overlaps) in any memory order, e.g.
        a transposed buffer: the draws are iid, so they fill its memory in storage order (noise
        layers keep one buffer per layer, in the layout of the feature map they perturb).

        NumPy float32 uses the Box-Muller transform on float32 uniforms: about 3x faster than
        NumPy's float32 ziggurat (``benchmarks/bench_mlp.py`` measures both), exact in
        distribution up to float32 resolution (the uniforms' 2^-24 grid bounds ``|eps|`` by 5.8,
        as in PyTorch's float32 sampler). A large draw is cut into up to ``NOISE_STREAMS``
        equal pieces, each filled by its own independent stream and run on threads; how it is
        cut depends only on its size, so the draws do not depend on the number of threads.
        float64 (gradient checks) and CuPy use their library's own sampler (on CuPy, written
        straight into ``out``)."""
        shape = tuple(shape)
        flat = None
        if out is not None and tuple(out.shape) == shape and out.dtype == self.dtype:
            flat = self._storage_view(out)
        if flat is None:
            out = self.xp.empty(shape, dtype=self.dtype)
            flat = out.reshape(-1)
        if self.name == "cupy":
            self._normals.standard_normal(dtype=self.dtype, out=flat)
        elif self.dtype == numpy.float32:
            pieces = min(self.NOISE_STREAMS, max(1, flat.size // self.STREAM_PIECE))
            bounds = [flat.size * k // pieces for k in range(pieces + 1)]
            run_all([lambda k=k: self._box_muller(flat[bounds[k]:bounds[k + 1]], k)
                     for k in range(pieces)])
        else:
            self.rng.standard_normal(out=flat, dtype=self.dtype)
        return out

    @staticmethod
    def _storage_view(a):
        """A 1-D view of ``a``'s memory in storage order, or ``None`` when ``a`` is not dense
        (its axes, sorted by decreasing stride, do not form a C-contiguous array)."""
        order = sorted(range(a.ndim), key=lambda axis: -a.strides[axis])
        view = a.transpose(order)
        if not view.flags.c_contiguous:
            return None
        return view.reshape(-1)

    def _box_muller(self, flat, stream):
        """Fill the 1-D float32 view ``flat`` with N(0, 1) draws from stream ``stream``: for
        uniforms ``u1, u2``, ``sqrt(-2 log(1 - u1)) * (cos(2 pi u2), sin(2 pi u2))``."""
        n = flat.size
        half = (n + 1) // 2
        if self._uniforms[stream] is None or self._uniforms[stream].size < 2 * half:
            self._uniforms[stream] = numpy.empty(2 * half, dtype=numpy.float32)
        u = self._streams[stream].random(dtype=numpy.float32, out=self._uniforms[stream][:2 * half])
        radius, angle = u[:half], u[half:]
        numpy.subtract(1, radius, out=radius)                  # in (0, 1]: log is finite
        numpy.log(radius, out=radius)
        numpy.multiply(radius, -2, out=radius)
        numpy.sqrt(radius, out=radius)
        numpy.multiply(angle, numpy.float32(2 * numpy.pi), out=angle)
        numpy.cos(angle, out=flat[:half])
        numpy.sin(angle[:n - half], out=flat[half:])
        flat[:half] *= radius
        flat[half:] *= radius[:n - half]

    def permutation(self, n):
        """A random permutation of ``0 .. n-1`` (on the device)."""
        return self.rng.permutation(int(n))          # CuPy permutes a range only for an int

    def uniform(self, low, high, shape):
        """Uniform draws on ``[low, high)`` in the working dtype (CuPy draws in it directly)."""
        if self.name == "cupy":
            return self.rng.uniform(low, high, size=tuple(shape), dtype=self.dtype)
        return self.rng.uniform(low, high, size=tuple(shape)).astype(self.dtype, copy=False)

    # --- arrays ----------------------------------------------------------------------------
    def zeros(self, shape):
        return self.xp.zeros(shape, dtype=self.dtype)

    def full(self, shape, value):
        return self.xp.full(shape, value, dtype=self.dtype)

    def asarray(self, a, dtype=None):
        """Move a host (or device) array to this backend, cast to ``dtype`` (default: working dtype)."""
        return self.xp.asarray(a, dtype=self.dtype if dtype is None else dtype)

    def to_host(self, a):
        """Return ``a`` as a NumPy array on the host (first raising a failed deferred check)."""
        self.raise_failed_checks()
        return a.get() if self.name == "cupy" else numpy.asarray(a)

    def scalar(self, a):
        """A 0-d or 1-element array as a Python float (synchronises on the GPU; first raises a
        failed deferred check)."""
        self.raise_failed_checks()
        return float(a)

    # --- checks on values ------------------------------------------------------------------
    def require(self, ok, message, detail=None):
        """Raise ``ValueError(message)`` unless the 0-d boolean array ``ok`` is true.

        On NumPy the check is immediate (reading ``ok`` costs nothing), with ``detail()``
        appended when given (e.g. the values found). On CuPy reading ``ok`` would wait for
        the GPU, so the check stays on the device, combined with earlier ones of the same
        message, and fails at the next host read (:meth:`scalar`, :meth:`to_host`,
        :meth:`raise_failed_checks`): no synchronisation inside a training or attack step."""
        if self.name == "numpy":
            if not ok:
                raise ValueError(message + (detail() if detail is not None else ""))
            return
        previous = self._pending.get(message)
        self._pending[message] = ok if previous is None else self.xp.logical_and(previous, ok)

    def raise_failed_checks(self):
        """Raise the first failed deferred check of :meth:`require` (one synchronisation when
        any are pending), and forget them all."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        flags = self.xp.stack(list(pending.values()))
        if not bool(flags.all()):
            failed = [m for m, ok in zip(pending, flags.get()) if not ok]
            raise ValueError(failed[0] + " (checked on the device, raised at the next host read)")

    def synchronize(self):
        """Wait for queued GPU work (for honest timings); nothing to do on NumPy."""
        if self.name == "cupy":
            self.xp.cuda.get_current_stream().synchronize()


def get_backend(name="numpy", dtype="float32", seed=0, kernels="fast", device=None):
    """Build a :class:`Backend`; the single entry point used by examples and tests."""
    return Backend(name, dtype, seed, kernels, device)
