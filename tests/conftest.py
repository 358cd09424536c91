"""Shared fixtures: the backend parametrisation (NumPy always; CuPy where a GPU is usable; and
``cupy-api``, the CuPy API conformance stand-in of ``tests/standin/cupy``, always), optional
PyTorch, and the real Fashion-MNIST data.

Environment switches (set by CI so that nothing it needs is silently skipped):

* ``MANUALBP_STRICT=1`` -- all of the following;
* ``MANUALBP_REQUIRE_TORCH=1`` -- a missing ``torch`` fails the parity tests instead of skipping them;
* ``MANUALBP_REQUIRE_JAX=1`` -- likewise for ``jax`` and the JAX parity tests;
* ``MANUALBP_REQUIRE_TORCHVISION=1`` -- likewise for ``torchvision`` and the tests of its models;
* ``MANUALBP_REQUIRE_DATA=1``  -- missing Fashion-MNIST files fail the real-data tests instead of
  skipping them;
* ``MANUALBP_REQUIRE_MPI=1`` -- a missing ``mpi4py`` or ``mpiexec`` fails the data-parallel tests.
"""
import importlib
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from manualbp.backend import Backend, BackendError, get_backend
from manualbp.data.mnist import SYSTEM_DIRS

FASHION_MNIST_DIR = Path(SYSTEM_DIRS["fashion-mnist"][0])
#: The directory that holds the CuPy stand-in package ``cupy``: put it first on ``PYTHONPATH``
#: to run a script on it.
STANDIN_DIR = Path(__file__).parent / "standin"
ROOT = Path(__file__).resolve().parents[1]


def checkout_env(*first, **variables):
    """The environment for a Python process that runs this checkout's manualbp, whatever copy
    is installed: ``first`` (e.g. :data:`STANDIN_DIR`) and the repository root ahead of
    ``PYTHONPATH``, and ``variables`` set."""
    path = [str(d) for d in (*first, ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **variables)


def _env_flag(name):
    """Whether the switch ``name`` is on, directly or through ``MANUALBP_STRICT=1``."""
    return any(os.environ.get(key, "").strip() == "1" for key in (name, "MANUALBP_STRICT"))


def _cupy_unavailable():
    """``None`` when CuPy imports and sees a GPU, else the reason why not (for the skip)."""
    try:
        Backend("cupy")
    except BackendError as err:
        return str(err)
    return None


CUPY_UNAVAILABLE = _cupy_unavailable()

BACKEND_PARAMS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("cupy", id="cupy", marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(CUPY_UNAVAILABLE is not None, reason=f"no usable GPU: {CUPY_UNAVAILABLE}"),
    ]),
    pytest.param("cupy-api", id="cupy-api", marks=pytest.mark.cupy_api),
]


def _load_standin():
    """The stand-in module, loaded once under the name ``cupy`` (not left in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location("cupy", STANDIN_DIR / "cupy" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_STANDIN = []


@pytest.fixture
def cupy_standin(monkeypatch):
    """The CuPy stand-in as ``cupy`` for one test, its counters cleared: ``Backend("cupy")``
    then runs on NumPy under CuPy's API rules (CuPy API conformance -- not a GPU)."""
    if not _STANDIN:
        _STANDIN.append(_load_standin())
    module = _STANDIN[0]
    module.reset()
    monkeypatch.setitem(sys.modules, "cupy", module)
    return module


def pytest_collection_modifyitems(config, items):
    """On the stand-in each layer test runs once, on the fast kernels: the reference layers'
    CuPy conformance is tested model by model in tests/test_cupy.py."""
    def standin_reference(item):
        params = getattr(getattr(item, "callspec", None), "params", {})
        return params.get("backend_name") == "cupy-api" and params.get("kernels") == "reference"
    dropped = [item for item in items if standin_reference(item)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not standin_reference(item)]


@pytest.fixture(params=BACKEND_PARAMS)
def backend_name(request):
    """``"numpy"``; ``"cupy"`` (marked ``gpu``; skipped unless CuPy sees a GPU); and
    ``"cupy-api"``, which gives ``"cupy"`` with the stand-in in place: test bodies written
    against ``bk.xp`` run on all three."""
    if request.param == "cupy-api":
        request.getfixturevalue("cupy_standin")
        return "cupy"
    return request.param


@pytest.fixture(params=["fast", "reference"])
def kernels(request):
    """``"fast"`` and ``"reference"``: tests of layers built on ``bk64`` / ``bk32`` check the
    fast kernels and the reference layers alike."""
    return request.param


@pytest.fixture
def bk64(backend_name, kernels):
    """A float64 backend (gradient checks) on each available array module and kernel set."""
    return get_backend(backend_name, "float64", 0, kernels)


@pytest.fixture
def bk32(backend_name, kernels):
    """A float32 backend (the training dtype) on each available array module and kernel set."""
    return get_backend(backend_name, "float32", 0, kernels)


def assert_normwise_close(ours, reference, rtol, what):
    """``||ours - reference|| / ||reference|| <= rtol`` (host arrays, compared in float64)."""
    import numpy as np
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, what
    error = np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), np.finfo(np.float64).tiny)
    assert error <= rtol, f"{what}: relative error {error:.3g} > {rtol:g}"


def _require_module(name, install="pip install -e '.[test]'", load=importlib.import_module):
    """Import and return module ``name`` (by ``load(name)``); skip when it is missing, or fail
    under ``MANUALBP_REQUIRE_<NAME>=1``."""
    flag = f"MANUALBP_REQUIRE_{name.upper()}"
    try:
        return load(name)
    except ImportError as err:
        if _env_flag(flag):
            pytest.fail(f"{flag}=1 but {name} cannot be imported ({err}); install it with {install}",
                        pytrace=False)
        pytest.skip(f"{name} not installed")


def require_torch():
    """``torch`` (the PyTorch parity tests), see :func:`_require_module`."""
    return _require_module("torch")


def require_jax():
    """``jax`` (the JAX parity tests), see :func:`_require_module`."""
    return _require_module("jax")


def require_cupy():
    """The real ``cupy`` (its API, for the stand-in's snapshot; no GPU needed), see
    :func:`_require_module`."""
    return _require_module("cupy", "bash .ci/setup (cupy-cuda12x, which imports without a GPU)")


def require_torchvision():
    """``torchvision.models``, imported as :mod:`manualbp.verify.torchvision_zoo` does beside
    PyTorch's CPU build (the torchvision tests), see :func:`_require_module`."""
    from manualbp.verify.torchvision_zoo import models
    return _require_module("torchvision", "pip install --no-deps torchvision==0.28.0", lambda _: models())


def require_mpi():
    """The path of ``mpiexec``, with mpi4py importable (the data-parallel tests), see
    :func:`_require_module`."""
    _require_module("mpi4py")
    path = shutil.which("mpiexec")
    if path is None:
        if _env_flag("MANUALBP_REQUIRE_MPI"):
            pytest.fail("MANUALBP_REQUIRE_MPI=1 but mpiexec is not on PATH; install MPICH's with "
                        "pip install -e '.[mpi]'", pytrace=False)
        pytest.skip("mpiexec not on PATH")
    return path


def require_fashion_mnist():
    """Load all 70,000 Fashion-MNIST images from local files (never downloads); skip when they
    are missing, or fail under MANUALBP_REQUIRE_DATA=1."""
    from manualbp.data import DataError, load_mnist
    try:
        return load_mnist("fashion-mnist", download=False)
    except DataError as err:
        if _env_flag("MANUALBP_REQUIRE_DATA"):
            pytest.fail(f"MANUALBP_REQUIRE_DATA=1 but Fashion-MNIST is not available "
                        f"(expected in {FASHION_MNIST_DIR}): {err}", pytrace=False)
        pytest.skip(f"Fashion-MNIST not found (apt-get install dataset-fashion-mnist): {err}")


@pytest.fixture
def torch():
    """The ``torch`` module (see :func:`require_torch`)."""
    return require_torch()


@pytest.fixture
def jax():
    """The ``jax`` module (see :func:`require_jax`)."""
    return require_jax()


@pytest.fixture
def torchvision_models(torch):
    """``torchvision.models`` (see :func:`require_torchvision`)."""
    return require_torchvision()


@pytest.fixture
def mpiexec():
    """The path of ``mpiexec`` (see :func:`require_mpi`)."""
    return require_mpi()


@pytest.fixture(scope="session")
def fashion_mnist():
    """The Fashion-MNIST dict of :func:`manualbp.data.load_mnist` (see :func:`require_fashion_mnist`)."""
    return require_fashion_mnist()


@pytest.fixture
def requirements():
    """The helpers behind the optional-dependency fixtures, for testing them directly."""
    return SimpleNamespace(torch=require_torch, jax=require_jax, fashion_mnist=require_fashion_mnist,
                           fashion_mnist_dir=FASHION_MNIST_DIR)


def _import_example(name):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_example():
    """``load_example(name)``: the script ``examples/<name>.py`` imported as a module (its
    ``main(argv)`` callable)."""
    return _import_example


@pytest.fixture
def tiny_mnist(monkeypatch):
    """A tiny MNIST-like data set in place of the real one for every script: 1x28x28 images
    labelled by a learnable rule (top half brighter than the bottom), 64 training, 32 validation
    and 96 test images, cut by the quick-run limits. Returns the list of datasets loaded (empty
    when a script refused its flags before any work)."""
    import numpy as np

    from manualbp import datasets
    loads = []

    def tiny_splits(bk, dataset, data_dir=None, seed=0, limit_train=None, limit_eval=None):
        loads.append(dataset)
        x = np.random.default_rng(seed).integers(0, 256, (192, 1, 28, 28), dtype=np.uint8)
        y = (x[:, :, :14].sum((1, 2, 3)) > x[:, :, 14:].sum((1, 2, 3))).astype("int64")
        limits = {"train": limit_train, "val": limit_eval, "test": limit_eval}
        return {k: (datasets.pixels(bk, x[s][:limits[k]]), bk.asarray(y[s][:limits[k]], dtype="int64"))
                for k, s in (("train", slice(0, 64)), ("val", slice(64, 96)), ("test", slice(96, 192)))}

    monkeypatch.setattr(datasets, "load_splits", tiny_splits)
    return loads
