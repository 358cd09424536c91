"""The backend: choices and their errors, random draws in the working dtype, seeding -- and the
rule that engine modules reach NumPy/CuPy only through it."""
import ast
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import manualbp
from manualbp.backend import BACKENDS, DTYPES, Backend, BackendError, get_backend

PACKAGE_DIR = Path(manualbp.__file__).resolve().parent


# --- choices and errors --------------------------------------------------------------------------

def test_unknown_backend_names_the_choices():
    with pytest.raises(BackendError) as info:
        get_backend("jax")
    message = str(info.value)
    assert "'jax'" in message and "numpy" in message and "cupy" in message
    assert BACKENDS == ("numpy", "cupy")


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex128", "double"])
def test_unknown_dtype(dtype):
    with pytest.raises(BackendError) as info:
        get_backend("numpy", dtype)
    assert repr(dtype) in str(info.value) and "float32" in str(info.value) and "float64" in str(info.value)
    assert DTYPES == ("float32", "float64")


def test_backend_error_is_a_runtime_error():
    assert issubclass(BackendError, RuntimeError)


def test_cupy_missing_gives_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)             # ``import cupy`` raises ImportError
    with pytest.raises(BackendError) as info:
        get_backend("cupy")
    message = str(info.value)
    assert "CuPy" in message and "not installed" in message
    assert "pip install" in message and "--backend numpy" in message
    # one error, not an ImportError traceback with a second one on top
    assert info.value.__cause__ is None and info.value.__suppress_context__


def _fake_cupy(device_count):
    def get_device_count():
        if isinstance(device_count, Exception):
            raise device_count
        return device_count
    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    return types.SimpleNamespace(cuda=types.SimpleNamespace(runtime=runtime))


@pytest.mark.parametrize("count, words", [
    (0, "sees no GPU"),
    (RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected"), "no GPU is usable"),
])
def test_cupy_without_gpu_gives_one_clear_error(monkeypatch, count, words):
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(count))
    with pytest.raises(BackendError) as info:
        Backend("cupy")
    assert words in str(info.value) and "--backend numpy" in str(info.value)
    err = info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_repr_and_attributes():
    bk = get_backend("numpy", "float64", 3)
    assert bk.xp is np and bk.dtype == np.float64 and bk.name == "numpy"
    assert repr(bk) == "Backend('numpy', dtype='float64', kernels='fast')"
    assert get_backend().dtype == np.float32                   # training default


# --- random draws and arrays ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_in_working_dtype(backend_name, dtype):
    bk = get_backend(backend_name, dtype, 0)
    draw = bk.normal((2000, 3))
    assert draw.dtype == np.dtype(dtype) and draw.shape == (2000, 3)
    host = bk.to_host(draw)
    assert isinstance(host, np.ndarray)
    assert abs(host.mean()) < 0.1 and abs(host.std() - 1) < 0.1
    assert bk.uniform(-1, 1, (5,)).dtype == np.dtype(dtype)
    assert bk.zeros((2, 2)).dtype == bk.full((2,), 3.0).dtype == bk.asarray([1, 2]).dtype == np.dtype(dtype)
    assert bk.asarray([1, 2], dtype="int64").dtype == np.int64


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_into_out_buffer(dtype):
    bk = get_backend("numpy", dtype, 5)
    out = np.empty((4, 3), dtype=dtype)
    result = bk.normal((4, 3), out=out)
    assert result is out
    bk.seed(5)
    np.testing.assert_array_equal(out, bk.normal((4, 3)))
    # a buffer of another shape or dtype is not written: a new array comes back
    other = np.zeros((2, 3), dtype=dtype)
    fresh = bk.normal((4, 3), out=other)
    assert fresh is not other and fresh.shape == (4, 3) and not other.any()
    wrong_dtype = np.zeros((4, 3), dtype=np.float64 if dtype == "float32" else np.float32)
    fresh = bk.normal((4, 3), out=wrong_dtype)
    assert fresh is not wrong_dtype and fresh.dtype == np.dtype(dtype) and not wrong_dtype.any()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normal_fills_a_transposed_out_buffer_in_place(dtype):
    """A dense buffer in any memory order (a batch-innermost feature map) is filled through its
    storage: the same numbers as a C-ordered draw, laid out in memory order."""
    bk = get_backend("numpy", dtype, 3)
    out = np.zeros((5, 4, 3, 2), dtype=dtype).transpose(3, 0, 1, 2)
    assert not out.flags.c_contiguous
    result = bk.normal(out.shape, out=out)
    assert result is out and out.all()
    bk.seed(3)
    np.testing.assert_array_equal(out.transpose(1, 2, 3, 0), bk.normal((5, 4, 3, 2)))
    # a strided view with gaps is not dense: a new array comes back, the view is untouched
    gaps = np.zeros((4, 6), dtype=dtype)[:, ::2]
    fresh = bk.normal(gaps.shape, out=gaps)
    assert fresh is not gaps and fresh.flags.c_contiguous and not gaps.any()


@pytest.mark.parametrize("threads", ["2", "3"])
def test_large_float32_draws_come_from_independent_streams_whatever_the_threads(monkeypatch, threads):
    """A large draw is filled piece by piece from separate streams, on threads: the numbers do
    not depend on the thread count, are standard normal, and the pieces are not repeats."""
    n = Backend.NOISE_STREAMS * Backend.STREAM_PIECE + 12345
    draws = {}
    for setting in ("1", threads):
        monkeypatch.setenv("MANUALBP_NUM_THREADS", setting)
        draws[setting] = get_backend("numpy", "float32", 9).normal((n,))
    np.testing.assert_array_equal(draws["1"], draws[threads])
    eps = draws["1"].astype(np.float64)
    assert abs(eps.mean()) < 5 / np.sqrt(n) and abs(eps.var() - 1) < 5 * np.sqrt(2 / n)
    pieces = eps[:Backend.NOISE_STREAMS * (n // Backend.NOISE_STREAMS)].reshape(Backend.NOISE_STREAMS, -1)
    correlation = np.corrcoef(pieces)[np.triu_indices(Backend.NOISE_STREAMS, 1)]
    assert np.abs(correlation).max() < 5 / np.sqrt(pieces.shape[1])


def test_same_seed_same_draws(backend_name):
    a, b = get_backend(backend_name, "float64", 42), get_backend(backend_name, "float64", 42)
    for bk in (a, b):
        bk.draws = [bk.to_host(bk.normal((3, 4))), bk.to_host(bk.uniform(0, 1, (5,))),
                    bk.to_host(bk.permutation(10))]
    for x, y in zip(a.draws, b.draws):
        np.testing.assert_array_equal(x, y)
    c = get_backend(backend_name, "float64", 43)
    assert not np.array_equal(c.to_host(c.normal((3, 4))), a.draws[0])
    a.seed(42)                                                 # re-seeding restarts the stream
    np.testing.assert_array_equal(a.to_host(a.normal((3, 4))), b.draws[0])
    a.seed([42, 1])                                            # sequence seeds (seed, epoch)
    first = a.to_host(a.normal((3,)))
    a.seed([42, 1])
    np.testing.assert_array_equal(a.to_host(a.normal((3,))), first)
    a.seed([42, 2])
    assert not np.array_equal(a.to_host(a.normal((3,))), first)


def test_permutation_and_scalar(backend_name):
    bk = get_backend(backend_name, "float32", 1)
    perm = bk.to_host(bk.permutation(50))
    assert sorted(perm.tolist()) == list(range(50)) and perm.tolist() != list(range(50))
    value = bk.scalar(bk.asarray([2.5]).sum())
    assert type(value) is float and value == 2.5
    bk.synchronize()


# --- static: only the backend imports NumPy / CuPy ------------------------------------------------

ARRAY_MODULES = {"numpy", "cupy"}

#: Engine files allowed to import NumPy or CuPy themselves, relative to the package directory:
#: the backend (the one place for the array module), the host-side data loaders, checkpoint
#: file I/O and plotting. Everything else gets ``xp`` from the backend.
ALLOWED = {
    "backend.py",         # owns the array module
    "data/",              # host-side loading (IDX files, downloads, splits)
    "checkpoint.py",      # file I/O on host arrays
    "plots.py",           # plotting, if present
    "corruptions.py",     # data transforms on host images (scipy.ndimage filters)
    "attacks/lbfgs.py",   # scipy.optimize works on flat float64 host vectors
    "evaluate.py",        # accuracies over noise draws, counted on the host
    "robustness.py",      # the tables' statistics of results copied to the host
    "verify/compare.py",  # perturbs host copies of the arrays it compares (their round-off)
    "course/",            # the course's exercises and solutions: plain NumPy for learners, host arrays
}


def allowed(relative):
    return any(relative == entry or (entry.endswith("/") and relative.startswith(entry)) for entry in ALLOWED)


def array_module_imports(source, filename="<source>"):
    """``[(line, module)]`` of every import of numpy/cupy in ``source`` (``import``, ``from``,
    ``__import__("numpy")``, ``importlib.import_module("cupy")``)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = getattr(func, "id", None) or getattr(func, "attr", "")
            if called in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                names = [node.args[0].value]
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ARRAY_MODULES]
    return found


def test_import_scanner_finds_every_form():
    source = ("import os\nimport numpy as np\nfrom cupy import cuda\nimport numpy.linalg\n"
              "from . import backend\nfrom .numpy import x\nm = __import__('cupy')\n"
              "import importlib\nn = importlib.import_module('numpy')\nimport numpyro\n")
    assert sorted(array_module_imports(source)) == [(2, "numpy"), (3, "cupy"), (4, "numpy.linalg"),
                                                    (7, "cupy"), (9, "numpy")]
    assert allowed("backend.py") and allowed("data/idx.py") and allowed("data/sub/x.py")
    assert not allowed("layers/linear.py") and not allowed("database.py") and not allowed("plots2.py")


def test_only_backend_and_host_modules_import_numpy_or_cupy():
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    relative = [f.relative_to(PACKAGE_DIR).as_posix() for f in files]
    assert "backend.py" in relative and "layers/linear.py" in relative   # scanned the package
    offenders = {}
    for path, rel in zip(files, relative):
        if allowed(rel):
            continue
        hits = array_module_imports(path.read_text(encoding="utf-8"), str(path))
        if hits:
            offenders[rel] = hits
    assert not offenders, (f"engine modules must get the array module from the backend (bk.xp), "
                           f"not import it: {offenders}; a module that only works on host arrays "
                           f"belongs in ALLOWED (tests/test_backend.py) with its reason")
    assert array_module_imports((PACKAGE_DIR / "backend.py").read_text()) != []
