"""A NumPy-backed stand-in for CuPy: CuPy API conformance on machines without a GPU.

It is not a GPU and proves nothing about one; tests that use it are labelled "CuPy API
conformance". What it enforces, as CuPy does or more strictly:

* only the names of CuPy's namespace, and only the keywords of their signatures, as recorded in
  ``api.json`` (written from an installed CuPy by ``tests/standin/refresh_cupy_api.py``);
* no implicit conversion to NumPy (``numpy.asarray(a)`` raises), no NumPy array where a device
  array is needed (arguments, indices, assigned values): data crosses only by ``cupy.asarray`` /
  ``.get()`` / ``cupy.asnumpy``;
* integer-array indices wrap around out of bounds (CuPy's rule, where NumPy raises);
* new arrays are C-ordered, as CuPy allocates them: element-wise results, reductions and
  the rest, except where CuPy follows the input (``*_like``, ``astype``) or returns a view.

And it counts, by the engine's call site (``file:line``):

* ``syncs``: every host synchronisation -- ``float()`` / ``int()`` / ``bool()`` / ``.item()`` /
  ``.get()`` / ``asnumpy`` / printing / ``Stream.synchronize``, and the calls whose result's size
  depends on the data, so that CuPy must read a count back before allocating it (indexing with a
  boolean array, ``nonzero`` and its kin, ``where`` with one argument), and the reads CuPy's own
  Python code makes (``lib.stride_tricks.sliding_window_view`` checks its window shape on the
  device);
* ``relayouts``: every copy made only to change memory order -- a ``reshape`` or ``ravel`` that
  cannot be a view, ``ascontiguousarray`` of a non-C-contiguous array, a ``tensordot`` /
  ``matmul`` operand that is not a C- or F-contiguous matrix (or C-contiguous stack) and a
  ``matmul`` ``out=`` that is not C-contiguous, both operands of an ``einsum`` that sums over an
  index they share, ``get`` of a non-contiguous array, and an element-wise input that overlaps
  ``out=`` without being it;
* ``launches``: every call that runs work on the device, each a kernel launch (or a cuBLAS
  call) on a GPU -- a ufunc, an assignment or in-place operator, a matrix product, a random
  draw, and a function, method or index whose result is a new array (not a view; allocation
  alone, ``empty`` / ``empty_like``, runs nothing).

Launches are a lower bound: some CuPy calls run several kernels (``var``, ``uniform``, a full
reduction, integer-array indexing). ``reset()`` clears the counters.
"""
import collections
import functools
import json
import os
import sys

import numpy

_HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_HERE, "api.json")) as _f:
    API = json.load(_f)
__version__ = API["version"] + "+standin"

syncs = collections.Counter()
relayouts = collections.Counter()
launches = collections.Counter()
_NUMPY_DIR = os.path.dirname(numpy.__file__)
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))


def reset():
    """Clear the counters."""
    syncs.clear()
    relayouts.clear()
    launches.clear()


def _site():
    """``file:line`` of the first caller outside this module and NumPy."""
    frame = sys._getframe(1)
    while frame is not None and (frame.f_code.co_filename == __file__
                                 or frame.f_code.co_filename.startswith(_NUMPY_DIR)):
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{os.path.relpath(frame.f_code.co_filename, _ROOT)}:{frame.f_lineno}"


def _sync(kind):
    syncs[(kind, _site())] += 1


def _relayout(kind):
    relayouts[(kind, _site())] += 1


#: Functions that only allocate: no kernel runs.
ALLOCATE_ONLY = {"empty", "empty_like"}


def _launch(kind):
    launches[(kind, _site())] += 1


def _is_view(result, inputs):
    """Whether ``result`` shares memory with one of the arrays among ``inputs``."""
    return any(isinstance(a, numpy.ndarray) and numpy.may_share_memory(result, a) for a in inputs)


def _launch_if_new(kind, result, inputs):
    """A launch when ``result`` is a new array, not a view of one of ``inputs``."""
    if isinstance(result, numpy.ndarray) and kind not in ALLOCATE_ONLY and not _is_view(result, inputs):
        _launch(kind)


# --- crossing between host and device -------------------------------------------------------
def _unwrap(value, where):
    """The NumPy array behind a device array; lists and tuples element by element; a host array
    is refused."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, numpy.ndarray):
        raise TypeError(f"{where}: got a numpy.ndarray where CuPy needs a cupy.ndarray "
                        "(move it to the device with cupy.asarray)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, where) for v in value)
    return value


def _wrap(value):
    """Device arrays for the NumPy arrays in ``value`` (NumPy scalars become 0-d arrays, as
    CuPy's reductions return them)."""
    if isinstance(value, numpy.ndarray):
        out = object.__new__(ndarray)
        out._a = value
        return out
    if isinstance(value, numpy.generic):
        return _wrap(numpy.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


#: Functions and methods whose new arrays follow their input's memory layout in CuPy too.
FOLLOW_LAYOUT = {"empty_like", "zeros_like", "ones_like", "full_like", "astype"}


def _allocated(result, inputs, name):
    """``result`` as CuPy allocates it: a new array that NumPy laid out like an input becomes
    C-ordered (views, and the functions of :data:`FOLLOW_LAYOUT`, are left as they are)."""
    if (not isinstance(result, numpy.ndarray) or result.flags.c_contiguous or name in FOLLOW_LAYOUT
            or _is_view(result, inputs)):
        return result
    return numpy.ascontiguousarray(result)


#: Functions and methods whose result's size depends on the data: CuPy reads it back (a sync).
DATA_SIZED = {"nonzero", "flatnonzero", "argwhere", "unique", "compress", "extract"}


def _count_data_sized(name, args):
    if name in DATA_SIZED or (name == "where" and len(args) == 1):
        _sync(name)


def _check_keywords(where, params, kwargs):
    """Refuse keywords that CuPy's signature of ``where`` does not have."""
    if params is None or any(p.startswith("**") for p in params):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"{where}() got keyword(s) {', '.join(unknown)} that CuPy "
                        f"{API['version']} does not accept (it takes {', '.join(params) or 'none'})")


def _copy_overlapping(inputs, out):
    """CuPy copies each input whose memory overlaps ``out`` but is not ``out`` itself before an
    element-wise kernel writes there (NumPy copies less): a relayout and a launch each."""
    for a in inputs:
        if isinstance(a, ndarray) and a is not out and numpy.may_share_memory(a._a, out._a):
            _relayout("overlaps out=")
            _launch("overlaps out=")


def _ufunc_call(name, args, kwargs):
    """The NumPy ufunc ``name`` on device arrays; a new result is C-ordered, as CuPy's are."""
    params = ["out", "casting", "dtype"]
    _check_keywords(f"cupy.{name}", params, kwargs)
    _launch(name)
    inputs = _unwrap(tuple(args), f"cupy.{name}")
    if "out" in kwargs:
        out = kwargs["out"]
        if isinstance(out, tuple):
            out = out[0] if len(out) == 1 else out
        if isinstance(out, ndarray):
            _copy_overlapping(args, out)
        getattr(numpy, name)(*inputs, **dict(kwargs, out=_unwrap(out, f"cupy.{name}(out=)")))
        return out
    return _wrap(getattr(numpy, name)(*inputs, order="C", **kwargs))


class ufunc:
    """A CuPy universal function (element-wise, C-ordered results)."""

    def __init__(self, name, nin, nout):
        self.__name__ = self.name = name
        self.nin, self.nout = nin, nout

    def __call__(self, *args, **kwargs):
        return _ufunc_call(self.name, args, kwargs)

    def at(self, a, indices, b=None):
        """In place at ``indices``, repeated indices applied once each (one launch)."""
        _launch(f"{self.name}.at")
        where = f"cupy.{self.name}.at"
        getattr(numpy, self.name).at(_unwrap(a, where), _unwrap(indices, where), _unwrap(b, where))

    def __repr__(self):
        return f"<ufunc 'cupy_{self.name}' (stand-in)>"


# --- cuBLAS-style operands -------------------------------------------------------------------
def _matrix_needs_copy(a, rows):
    """Whether CuPy copies ``a`` before cuBLAS reads it as a ``(rows, -1)`` matrix: when that
    is not a view, or not a C- or F-contiguous one."""
    if a.size == 0:
        return False
    view = a.reshape(rows, -1)
    return not numpy.shares_memory(view, a) or not (view.flags.c_contiguous or view.flags.f_contiguous)


def tensordot(a, b, axes=2):
    """``cupy.tensordot``: the operands are transposed to ``(free, summed)`` / ``(summed, free)``
    matrices, copied when they are not such a matrix already (a relayout)."""
    if isinstance(axes, int):
        axes_a, axes_b = list(range(-axes, 0)), list(range(axes))
    else:
        axes_a, axes_b = axes
        axes_a = [axes_a] if isinstance(axes_a, int) else list(axes_a)
        axes_b = [axes_b] if isinstance(axes_b, int) else list(axes_b)
    x, y = _unwrap((a, b), "cupy.tensordot")
    _launch("tensordot")
    axes_a = [k % x.ndim for k in axes_a]
    axes_b = [k % y.ndim for k in axes_b]
    free_a = [k for k in range(x.ndim) if k not in axes_a]
    free_b = [k for k in range(y.ndim) if k not in axes_b]
    rows_a = int(numpy.prod([x.shape[k] for k in free_a]))
    rows_b = int(numpy.prod([y.shape[k] for k in axes_b]))
    if _matrix_needs_copy(x.transpose(free_a + axes_a), rows_a):
        _relayout("tensordot")
    if _matrix_needs_copy(y.transpose(axes_b + free_b), rows_b):
        _relayout("tensordot")
    return _wrap(numpy.tensordot(x, y, axes=(axes_a, axes_b)))


def matmul(x1, x2, out=None, **kwargs):
    """``cupy.matmul``. CuPy copies an operand that is neither C- nor F-contiguous and, in a
    product of stacks of matrices (more than 2 dimensions), one that is not C-contiguous; it
    computes into a new array, then copies, when ``out`` is not C-contiguous of the result's
    dtype: each a relayout."""
    _check_keywords("cupy.matmul", API["cupy"]["functions"]["matmul"], kwargs)
    a, b = _unwrap((x1, x2), "cupy.matmul")
    _launch("matmul")
    stacked = max(a.ndim, b.ndim) > 2
    for m in (a, b):
        if m.size and not (m.flags.c_contiguous or (not stacked and m.flags.f_contiguous)):
            _relayout("matmul")
    if out is None:
        return _wrap(numpy.matmul(a, b, **kwargs))
    target = _unwrap(out, "cupy.matmul(out=)")
    if not target.flags.c_contiguous or target.dtype != numpy.result_type(a, b):
        _relayout("matmul out=")
        _launch("matmul out=")
    numpy.matmul(a, b, out=target, **kwargs)
    return out


def einsum(*operands, **kwargs):
    """``cupy.einsum`` (only ``dtype`` and ``optimize``, as CuPy takes them). CuPy runs a product
    of two operands that sums over a shared index as a batched ``matmul`` of both transposed to
    ``(batch, free, summed)`` and flattened: counted, more strictly than CuPy, as a relayout copy
    of each operand."""
    unknown = sorted(set(kwargs) - {"dtype", "optimize"})
    if unknown:
        raise TypeError(f"Did not understand the following kwargs: {unknown}")
    subscripts, arrays = operands[0], _unwrap(operands[1:], "cupy.einsum")
    _launch("einsum")
    inputs, arrow, output = subscripts.replace(" ", "").partition("->")
    terms = [set(t) - {"."} for t in inputs.split(",")]
    if not arrow:                                        # implicit output: the labels seen once
        output = {c for c in inputs if c.isalpha() and inputs.count(c) == 1}
    if len(terms) == 2 and (terms[0] & terms[1]) - set(output):
        _relayout("einsum")
        _relayout("einsum")
    return _wrap(_allocated(numpy.einsum(subscripts, *arrays, **kwargs), arrays, "einsum"))


def ascontiguousarray(a, dtype=None):
    x = _unwrap(a, "cupy.ascontiguousarray")
    if not x.flags.c_contiguous:
        _relayout("ascontiguousarray")
        _launch("ascontiguousarray")
    return _wrap(numpy.ascontiguousarray(x, dtype=dtype))


# --- the array ------------------------------------------------------------------------------
_METHODS = API["cupy.ndarray"]["methods"]
_ATTRIBUTES = set(API["cupy.ndarray"]["attributes"])
_BINARY = ("add", "subtract", "multiply", "true_divide", "floor_divide", "remainder", "power",
           "less", "less_equal", "equal", "not_equal", "greater", "greater_equal",
           "bitwise_and", "bitwise_or", "bitwise_xor", "left_shift", "right_shift")
_DUNDER = {"add": "add", "sub": "subtract", "mul": "multiply", "truediv": "true_divide",
           "floordiv": "floor_divide", "mod": "remainder", "pow": "power", "and": "bitwise_and",
           "or": "bitwise_or", "xor": "bitwise_xor", "lshift": "left_shift", "rshift": "right_shift"}
_COMPARE = {"lt": "less", "le": "less_equal", "eq": "equal", "ne": "not_equal", "gt": "greater",
            "ge": "greater_equal"}


class ndarray:
    """A device array: a NumPy array that the host may not read without a counted sync."""

    __slots__ = ("_a", "__weakref__")

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        self._a = numpy.empty(shape, dtype=dtype, order=order)

    # host reads: each one a synchronisation
    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None, order="C", out=None, blocking=True):
        """A host copy; CuPy first copies an array not contiguous in ``order`` on the device."""
        _sync("get")
        flags = self._a.flags
        fortran = order.upper() == "F" or (order.upper() == "A" and flags.f_contiguous)
        if self._a.size and not (flags.f_contiguous if fortran else flags.c_contiguous):
            _relayout("get")
            _launch("get")
        return numpy.array(self._a, order=order)

    def item(self):
        _sync("item")
        return self._a.item()

    def tolist(self):
        _sync("tolist")
        return self._a.tolist()

    def __float__(self):
        _sync("float")
        return float(self._a)

    def __int__(self):
        _sync("int")
        return int(self._a)

    def __index__(self):
        _sync("int")
        return self._a.__index__()

    def __bool__(self):
        _sync("bool")
        return bool(self._a)

    def __complex__(self):
        _sync("complex")
        return complex(self._a)

    def __repr__(self):
        _sync("print")
        return repr(self._a).replace("array", "cupy-standin array", 1)

    __str__ = __repr__

    def __format__(self, spec):
        _sync("print")
        return format(self._a, spec)

    # NumPy's protocols, as CuPy implements them: NumPy functions and ufuncs run CuPy's
    def __array_ufunc__(self, uf, method, *inputs, **kwargs):
        if method != "__call__":
            return NotImplemented
        return _ufunc_call(uf.__name__, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        module = sys.modules[__name__]
        return getattr(module, func.__name__)(*args, **kwargs)

    # attributes and methods
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    strides = property(lambda self: self._a.strides)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    flags = property(lambda self: self._a.flags)
    T = property(lambda self: _wrap(self._a.T))
    base = property(lambda self: None if self._a.base is None else _wrap(self._a.base))

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r} "
                                 f"(not in CuPy {API['version']}'s API)")
        method = getattr(self._a, name)
        params = _METHODS[name]

        def call(*args, **kwargs):
            _check_keywords(f"cupy.ndarray.{name}", params, kwargs)
            if name in DATA_SIZED:
                _sync(name)
            result = method(*_unwrap(args, f"cupy.ndarray.{name}"),
                            **{k: _unwrap(v, f"cupy.ndarray.{name}") for k, v in kwargs.items()})
            if name in ("reshape", "ravel", "flatten") and self._a.size and not numpy.shares_memory(result, self._a):
                _relayout(name)
            if result is None:                                     # in place: fill, sort, put
                _launch(f"ndarray.{name}")
            _launch_if_new(f"ndarray.{name}", result, [self._a])
            return _wrap(_allocated(result, [self._a], name))
        return call

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    def _key(self, key):
        """The NumPy index of ``key``; integer arrays wrap around out of bounds, as CuPy's do."""
        key = _unwrap(key, "cupy.ndarray indexing")
        parts = key if isinstance(key, tuple) else (key,)
        if any(p is None or p is Ellipsis for p in parts):
            return key
        wrapped = tuple(p % self._a.shape[axis] if isinstance(p, numpy.ndarray) and p.dtype.kind in "iu" else p
                        for axis, p in enumerate(parts))
        return wrapped if isinstance(key, tuple) else wrapped[0]

    def __getitem__(self, key):
        index = self._key(key)
        if any(isinstance(p, numpy.ndarray) and p.dtype == bool for p in (index if isinstance(index, tuple)
                                                                           else (index,))):
            _sync("boolean index")
        result = self._a[index]
        _launch_if_new("index", result, [self._a])
        return _wrap(result)

    def __setitem__(self, key, value):
        _launch("assignment")
        self._a[self._key(key)] = _unwrap(value, "cupy.ndarray assignment")

    def __neg__(self):
        return _ufunc_call("negative", (self,), {})

    def __pos__(self):
        return _ufunc_call("positive", (self,), {})

    def __abs__(self):
        return _ufunc_call("absolute", (self,), {})

    def __invert__(self):
        return _ufunc_call("invert", (self,), {})

    def __matmul__(self, other):
        return matmul(self, other)

    def __rmatmul__(self, other):
        return matmul(other, self)

    __hash__ = None


def _operators():
    def binary(uf, reflected=False):
        if reflected:
            return lambda self, other: _ufunc_call(uf, (other, self), {})
        return lambda self, other: _ufunc_call(uf, (self, other), {})

    def inplace(uf):
        def op(self, other):
            _launch(f"{uf} in place")
            _copy_overlapping((other,), self)
            getattr(numpy, uf)(self._a, _unwrap(other, f"cupy.ndarray {uf}="), out=self._a)
            return self
        return op

    for dunder, uf in _DUNDER.items():
        setattr(ndarray, f"__{dunder}__", binary(uf))
        setattr(ndarray, f"__r{dunder}__", binary(uf, reflected=True))
        setattr(ndarray, f"__i{dunder}__", inplace(uf))
    for dunder, uf in _COMPARE.items():
        setattr(ndarray, f"__{dunder}__", binary(uf))


_operators()


# --- the namespace --------------------------------------------------------------------------
def asarray(a, dtype=None, order=None, *, copy=None, blocking=False):
    """Host data moves to the device here (and only here, with :func:`array`)."""
    data = a._a if isinstance(a, ndarray) else a
    return _wrap(numpy.asarray(data, dtype=dtype, order=order))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, blocking=False):
    data = obj._a if isinstance(obj, ndarray) else obj
    return _wrap(numpy.array(data, dtype=dtype, copy=copy, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    if isinstance(a, ndarray):
        return a.get(order=order)
    return numpy.asarray(a, order=order)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else numpy


def fuse(*args, **kwargs):
    """``cupy.fuse``: the function itself, run op by op (a fused kernel computes the same)."""
    def decorate(function):
        @functools.wraps(function)
        def fused(*inputs):
            return function(*inputs)
        return fused
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return decorate(args[0])
    return decorate


class _CudaCode:
    """``ElementwiseKernel`` / ``RawKernel`` / ``ReductionKernel``: CUDA C, which the stand-in
    cannot run."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("the CuPy stand-in cannot run CUDA C kernels; "
                                  "write the kernel with cupy.fuse or ufuncs")


ElementwiseKernel = RawKernel = ReductionKernel = _CudaCode


def _function(name):
    target = getattr(numpy, name, None)
    if target is None:
        raise AttributeError(f"cupy.{name} is in CuPy's API but the stand-in has no NumPy twin for it")
    params = API["cupy"]["functions"][name]

    @functools.wraps(target)
    def call(*args, **kwargs):
        _check_keywords(f"cupy.{name}", params, kwargs)
        _count_data_sized(name, args)
        inputs = _unwrap(args, f"cupy.{name}")
        result = target(*inputs, **{k: _unwrap(v, f"cupy.{name}") for k, v in kwargs.items()})
        _launch_if_new(name, result, inputs)
        return _wrap(_allocated(result, inputs, name))
    return call


def __getattr__(name):
    space = API["cupy"]
    if name in space["ufuncs"]:
        return ufunc(name, *space["ufuncs"][name])
    if name in space["functions"]:
        return _function(name)
    if name in space["classes"] or name in space["constants"]:
        return getattr(numpy, name)
    raise AttributeError(f"module 'cupy' has no attribute {name!r} (not in CuPy {API['version']}'s API)")


class _Namespace:
    """A submodule of the stand-in: only the names CuPy has."""

    def __init__(self, name, names, **members):
        self._name, self._names = name, set(names)
        self.__dict__.update(members)

    def __getattr__(self, name):
        if name in self._names:
            raise AttributeError(f"{self._name}.{name} is in CuPy's API but not in the stand-in")
        raise AttributeError(f"module {self._name!r} has no attribute {name!r} "
                             f"(not in CuPy {API['version']}'s API)")


class _Generator:
    """A CuPy random generator class: NumPy's PCG64 drawing device arrays (its own stream, not
    CuPy's); only the methods, and keywords, that CuPy's class has, and of those the ones the
    engine draws with."""

    api = None                               # the API entry of the CuPy class

    def __init__(self, seed=None, method=None):
        _Generator.seed(self, seed)                  # not self.seed: a Generator has no seed()

    def __getattribute__(self, name):
        if name.startswith("_"):
            return object.__getattribute__(self, name)
        api = type(self).api
        methods = API[api]["methods"]
        if name not in methods:
            raise AttributeError(f"'{api}' has no attribute {name!r}")
        attribute = object.__getattribute__(self, name)

        def checked(*args, **kwargs):
            _check_keywords(f"{api}.{name}", methods[name], kwargs)
            return attribute(*args, **kwargs)
        return checked

    def _draw(self, values, dtype, out=None):
        _launch("random")
        if out is None:
            return _wrap(values.astype(dtype, copy=False))
        _unwrap(out, "out=")[...] = values
        return out

    @staticmethod
    def _check_out(dtype, size, out):
        """CuPy's checks of a generator's ``out=``: the requested float dtype, contiguous, and
        the shape of ``size`` when both are given."""
        dtype = numpy.dtype(dtype)
        if dtype.char not in "fd" or out.dtype.char != dtype.char:
            raise TypeError(f"Supplied output array has the wrong type. Expected {dtype.name}, got {out.dtype.name}")
        if not (out.flags.c_contiguous or out.flags.f_contiguous):
            raise ValueError("Supplied output array is not contiguous, writable or aligned.")
        if size is not None and tuple(numpy.atleast_1d(size)) != out.shape:
            raise ValueError("size must match out.shape when used together")

    def standard_normal(self, size=None, dtype=float, out=None):
        if out is not None:
            self._check_out(dtype, size, out)
        return self._draw(self._rng.standard_normal(size if out is None else out.shape), dtype, out)

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        return self._draw(self._rng.uniform(low, high, size), dtype)

    def permutation(self, num):
        """CuPy permutes ``range(num)`` only for a Python int; anything else is an array to
        shuffle (``len(num)``: a NumPy integer fails)."""
        _launch("random")
        if not isinstance(num, (int, ndarray)):
            raise TypeError(f"object of type {type(num).__name__!r} has no len()")
        return _wrap(self._rng.permutation(_unwrap(num, "permutation")))

    def seed(self, seed=None):
        self._rng = numpy.random.Generator(numpy.random.PCG64(seed))


class RandomState(_Generator):
    """``cupy.random.RandomState``."""
    api = "cupy.random.RandomState"


class Generator(_Generator):
    """``cupy.random.Generator`` (``cupy.random.default_rng``)."""
    api = "cupy.random.Generator"


random = _Namespace("cupy.random", API["cupy.random"]["functions"], RandomState=RandomState,
                    Generator=Generator, default_rng=lambda seed=None: Generator(seed))


def _stride_trick(name):
    """``cupy.lib.stride_tricks.<name>``: NumPy's, on the array behind a device array (a view);
    writeable windows refused, as CuPy refuses them. CuPy's ``sliding_window_view`` copies its
    window shape to the device and tests each entry there for ``< 0``: one host sync and one
    launch per window dimension."""
    target = getattr(numpy.lib.stride_tricks, name)
    params = API["cupy.lib.stride_tricks"]["functions"][name]

    @functools.wraps(target)
    def call(x, *args, **kwargs):
        _check_keywords(f"cupy.lib.stride_tricks.{name}", params, kwargs)
        if kwargs.get("writeable"):
            raise NotImplementedError("Writeable views are not supported.")
        if name == "sliding_window_view":
            window = args[0] if args else kwargs["window_shape"]
            for _ in numpy.atleast_1d(window):
                _launch("less")
                _sync("sliding_window_view")
        return _wrap(target(_unwrap(x, f"cupy.lib.stride_tricks.{name}"), *args, **kwargs))
    return call


_TRICKS = API["cupy.lib.stride_tricks"]["functions"]
lib = _Namespace("cupy.lib", ["stride_tricks"], stride_tricks=_Namespace(
    "cupy.lib.stride_tricks", _TRICKS, **{name: _stride_trick(name) for name in _TRICKS}))


class _Device:
    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)

    def use(self):
        if self.id != 0:
            raise ValueError(f"the stand-in has one device, not device {self.id}")


class _Stream:
    def synchronize(self):
        _sync("synchronize")


cuda = _Namespace(
    "cupy.cuda", API["cupy.cuda"], Device=_Device, Stream=_Stream,
    get_current_stream=lambda device=None: _Stream(),
    runtime=_Namespace("cupy.cuda.runtime", API["cupy.cuda.runtime"], getDeviceCount=lambda: 1,
                       getDeviceProperties=lambda device: {"name": b"CuPy stand-in (NumPy)"}))
