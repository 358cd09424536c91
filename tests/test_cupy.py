"""CuPy API conformance on the stand-in (``tests/standin/cupy``), and what it measures.

The stand-in is NumPy under CuPy's rules: nothing here runs on a GPU. It proves that the engine
asks CuPy only for what CuPy 14.2 offers, never reads a device array on the host inside a
training or PGD step, and that a ResNet step on CuPy's kernels makes no relayout copy.
"""
import json
import importlib.util

import numpy as np
import pytest

from manualbp import get_backend
from manualbp.attacks import eot_pgd, fgsm, pgd
from manualbp.model import evaluating
from manualbp.train import Trainer, make_optimizers
from manualbp.zoo import cnn, mlp, resnet

from conftest import STANDIN_DIR, require_cupy

pytestmark = pytest.mark.cupy_api


# --- the stand-in keeps CuPy's rules ----------------------------------------------------------------

def by_kind(counter):
    """A stand-in counter's counts summed over call sites: ``{kind: count}``."""
    counts = {}
    for (kind, _), n in counter.items():
        counts[kind] = counts.get(kind, 0) + n
    return counts


def test_the_stand_in_refuses_what_cupy_refuses(cupy_standin):
    cp = cupy_standin
    a = cp.asarray(np.arange(6.0).reshape(2, 3))
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(a)
    with pytest.raises(TypeError, match="numpy.ndarray where CuPy needs a cupy.ndarray"):
        a + np.ones(3)
    with pytest.raises(TypeError, match="numpy.ndarray where CuPy needs a cupy.ndarray"):
        a[...] = np.zeros((2, 3))
    with pytest.raises(AttributeError, match="not in CuPy 14.2.0's API"):
        cp.not_a_function
    with pytest.raises(AttributeError, match="not in CuPy"):
        a.not_a_method
    with pytest.raises(TypeError, match="does not accept"):
        cp.random.RandomState(0).standard_normal(3, out=a)       # CuPy's RandomState has no out=
    draws = cp.random.default_rng(0)
    with pytest.raises(TypeError, match="wrong type"):
        draws.standard_normal(out=cp.empty(3, dtype=np.float32))  # out= float32 needs dtype=float32
    with pytest.raises(ValueError, match="not contiguous"):
        draws.standard_normal(dtype=np.float32, out=cp.empty((4, 4), dtype=np.float32)[:, ::2])
    draws.standard_normal(dtype=np.float32, out=cp.empty((4, 4), dtype=np.float32).T)   # F-ordered: accepted
    with pytest.raises(NotImplementedError, match="cannot run CUDA C"):
        cp.ElementwiseKernel("T x", "T y", "y = x", "copy")


def test_the_stand_in_allocates_c_order_and_counts_syncs_and_relayouts(cupy_standin):
    cp = cupy_standin
    t = cp.asarray(np.arange(24.0).reshape(2, 3, 4)).transpose(2, 0, 1)
    assert not t.flags.c_contiguous
    assert (t + 1).flags.c_contiguous and cp.maximum(t, 0).flags.c_contiguous
    assert t.sum(axis=0).flags.c_contiguous and cp.empty_like(t).strides == t.strides
    assert cp.syncs == {} and cp.relayouts == {}
    assert float(t.sum()) == 276.0 and bool((t >= 0).all())
    assert {kind for kind, _ in cp.syncs} == {"float", "bool"}
    assert all(site.startswith("tests/test_cupy.py:") for _, site in cp.syncs)
    t.reshape(-1)                                                 # not a view: a copy
    cp.tensordot(t, t, axes=([1, 2], [1, 2]))                     # column-major matrices: read as they are
    strided = cp.asarray(np.ones((4, 12)))[:, ::2]
    cp.tensordot(strided, strided, axes=([1], [1]))               # no unit stride: copied
    cp.einsum("n...->...", t), cp.einsum("ij,ij->ij", strided, strided)
    assert by_kind(cp.relayouts) == {"reshape": 1, "tensordot": 2}
    cp.einsum("n...,n...->...", t, t)                             # a batched matmul of flattened copies
    assert by_kind(cp.relayouts) == {"reshape": 1, "tensordot": 2, "einsum": 2}
    with pytest.raises(TypeError, match="Did not understand"):
        cp.einsum("ij->i", t[0], out=cp.empty(4))


def test_the_stand_in_counts_a_result_sized_by_the_data_as_a_sync(cupy_standin):
    """CuPy must read back how many elements a boolean index, ``nonzero`` and kin, or a
    one-argument ``where`` select before it can allocate the result: a host sync."""
    cp = cupy_standin
    a = cp.asarray(np.arange(6.0))
    mask = a > 2
    a[mask] = 0                                                    # sizes known: no sync
    a[cp.asarray(np.array([0, 2]))]                                # an integer index: no sync
    cp.where(mask, a, 1.0)
    assert cp.syncs == {}
    a[mask], cp.nonzero(mask), mask.nonzero(), cp.flatnonzero(mask), cp.where(mask)
    assert by_kind(cp.syncs) == {"boolean index": 1, "nonzero": 2, "flatnonzero": 1, "where": 1}


def test_the_stand_in_counts_the_copies_cupy_makes_for_cublas_transfers_and_overlaps(cupy_standin):
    """CuPy's matmul copies a matrix that is neither C- nor F-contiguous and computes into a new
    array when ``out`` is not C-contiguous; ``get`` copies a non-contiguous array on the device
    first; an element-wise kernel copies an input that overlaps ``out`` unless it is ``out``."""
    cp = cupy_standin
    a = cp.asarray(np.arange(24.0).reshape(4, 6))
    cp.matmul(a, a.T), cp.matmul(a[:2], a[:3].T)                # C and F: read as they are
    assert cp.relayouts == {}
    cp.matmul(a[:, :3], a[:, ::2].T)                             # neither: both copied
    cp.matmul(a, a.T, out=cp.empty((4, 4)).T)                    # out not C-contiguous
    a[:, :4].get()
    cp.add(a[:, :-1], 1, out=a[:, 1:])                           # overlaps out: copied first
    cp.add(a, 1, out=a)
    a[:, 1:] += a[:, :-1]
    assert by_kind(cp.relayouts) == {"matmul": 2, "matmul out=": 1, "get": 1, "overlaps out=": 2}


def test_the_stand_ins_generators_take_what_cupys_take(cupy_standin):
    """A range is permuted only for a Python int; ``RandomState.seed`` restarts the stream;
    ``uniform`` draws in the dtype asked for."""
    cp = cupy_standin
    rng = cp.random.RandomState(3)
    first = rng.permutation(5).get()
    rng.seed(3)
    np.testing.assert_array_equal(rng.permutation(5).get(), first)
    with pytest.raises(TypeError, match="has no len"):
        rng.permutation(np.int64(5))
    assert rng.uniform(0, 1, size=(3,), dtype=np.float32).dtype == np.float32
    with pytest.raises(AttributeError):
        cp.random.default_rng(0).seed(1)


def test_the_stand_in_counts_cupys_sliding_window_check_as_syncs(cupy_standin):
    """CuPy's ``sliding_window_view`` tests its window shape for negative entries on the device
    and reads each answer back; ``as_strided`` only makes the view."""
    cp = cupy_standin
    a = cp.asarray(np.arange(12.0).reshape(3, 4))
    assert cp.lib.stride_tricks.sliding_window_view(a, (2, 2)).shape == (2, 3, 2, 2)
    assert by_kind(cp.syncs) == {"sliding_window_view": 2} and by_kind(cp.launches) == {"less": 2}
    cp.reset()
    view = cp.lib.stride_tricks.as_strided(a, (2, 3, 2, 2), (32, 8, 32, 8))
    assert cp.syncs == {} and cp.launches == {}
    np.testing.assert_array_equal(view.get(), np.lib.stride_tricks.sliding_window_view(a.get(), (2, 2)))


def test_the_stand_in_counts_device_work_as_launches(cupy_standin):
    """A ufunc, an assignment, an in-place operator, a product, a draw and a new array from a
    function, method or index each launch work on a GPU; views and bare allocation do not."""
    cp = cupy_standin
    a = cp.asarray(np.arange(12.0).reshape(3, 4))
    a.T, a[1:], a.reshape(4, 3), cp.broadcast_to(a, (2, 3, 4)), cp.empty((3, 4)), cp.empty_like(a)
    cp.lib.stride_tricks.as_strided(a, (2, 2), (8, 8))
    assert cp.launches == {}
    a + 1
    a[0] = 0
    a *= 2
    a @ a.T
    a.sum(axis=0), cp.zeros(3), a[cp.asarray(np.array([0, 2]))], a.fill(1)
    cp.random.default_rng(0).standard_normal(3)
    assert by_kind(cp.launches) == {"add": 1, "assignment": 1, "multiply in place": 1, "matmul": 1,
                                    "ndarray.sum": 1, "zeros": 1, "index": 1, "ndarray.fill": 1, "random": 1}


def test_the_api_snapshot_matches_an_installed_cupy():
    """``api.json`` is what ``refresh_cupy_api.py`` writes from the installed CuPy (checked when
    CuPy is installed at the recorded version)."""
    recorded = json.loads((STANDIN_DIR / "cupy" / "api.json").read_text())
    cupy = require_cupy()
    if "standin" in str(cupy.__file__):
        pytest.skip("the stand-in is first on PYTHONPATH: no real CuPy to compare with")
    if cupy.__version__ != recorded["version"]:
        pytest.skip(f"CuPy {cupy.__version__} installed, snapshot of {recorded['version']}: "
                    "run python tests/standin/refresh_cupy_api.py")
    refresh = importlib.util.spec_from_file_location("refresh", STANDIN_DIR / "refresh_cupy_api.py")
    module = importlib.util.module_from_spec(refresh)
    refresh.loader.exec_module(module)
    assert module.snapshot() == recorded


# --- no host sync in a step, no relayout in a ResNet step, few launches -----------------------------

FAMILIES = {
    "mlp": (lambda bk: mlp(bk, "mlpn", "relu", sizes=(784, 32, 16, 10)), (784,)),
    "cnn": (lambda bk: cnn(bk, "cnn-an", channels=(4, 8), hidden=16), (1, 28, 28)),
    "resnet18": (lambda bk: resnet(bk, "resnet18-an", (2, 2, 2, 2), width=4, input_size=16), (3, 16, 16)),
}


def _trainer(name, kernels="fast"):
    bk = get_backend("cupy", "float32", 0, kernels)
    build, shape = FAMILIES[name]
    model = build(bk)
    rng = np.random.default_rng(0)
    x = bk.asarray(rng.random((24, *shape)).astype(np.float32))
    y = bk.asarray(rng.integers(0, 10, 24), dtype="int64")
    return Trainer(model, make_optimizers(model)[0], batch_size=8, progress=False), x, y


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_training_step_and_an_attack_make_no_host_sync(name, cupy_standin):
    trainer, x, y = _trainer(name)
    trainer.model.train()
    trainer.step(x[:8], y[:8])                                     # first step: buffers are made
    cupy_standin.reset()
    trainer.step(x[:8], y[:8])
    assert dict(cupy_standin.syncs) == {}, "a training step reads the device"
    fgsm(trainer.model, x[:8], y[:8], 0.1)
    pgd(trainer.model, x[:8], y[:8], 0.1, 0.02, 3, random_start=True)
    eot_pgd(trainer.model, x[:8], y[:8], 0.1, 0.02, 2, draws=3)
    assert dict(cupy_standin.syncs) == {}, "an attack reads the device"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_an_epoch_and_an_evaluation_make_a_handful_of_syncs(name, cupy_standin):
    trainer, x, y = _trainer(name)
    trainer.train_epoch(x, y)
    assert sum(cupy_standin.syncs.values()) <= 3, dict(cupy_standin.syncs)
    cupy_standin.reset()
    trainer.evaluate(x, y, batch_size=8)
    assert sum(cupy_standin.syncs.values()) <= 3, dict(cupy_standin.syncs)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_reference_layers_keep_cupys_rules(name, cupy_standin):
    """``kernels="reference"`` on the stand-in: the mean model's logits are NumPy's reference
    ones for the same weights, and a training step and a PGD attack run without a host sync."""
    trainer, x, y = _trainer(name, "reference")
    model = trainer.model
    numpy_model = FAMILIES[name][0](get_backend("numpy", "float32", 0, "reference"))
    numpy_model.load_state_dict({k: v.get() for k, v in model.state_dict().items()})
    with evaluating(model, noise=False), evaluating(numpy_model, noise=False):
        np.testing.assert_allclose(model.forward(x).get(), numpy_model.forward(x.get()), rtol=1e-5, atol=1e-6)
    cupy_standin.reset()
    trainer.step(x[:8], y[:8])
    pgd(model, x[:8], y[:8], 0.1, 0.02, 2)
    assert dict(cupy_standin.syncs) == {}
    assert all(model.bk.kernel(m.op) == (m.op.forward, m.op.backward) for _, m in model.modules()
               if m.op is not None)


def test_a_deferred_check_fails_at_the_next_host_read(cupy_standin):
    """On CuPy a label out of range is caught on the device and raised where the host next
    reads (here the epoch's mean loss), not inside the step."""
    trainer, x, y = _trainer("mlp")
    y[3] = 10
    trainer.step(x[:8], y[:8])
    assert dict(cupy_standin.syncs) == {}
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.9 \(checked on the device"):
        trainer.bk.scalar(trainer.loss.losses.sum())


#: Kernel launches of a training step and of a 3-step PGD attack (batch of 8), on the stand-in's
#: count (docs/performance.md): a change that launches more fails here.
LAUNCHES = {"mlp": (87, 152), "cnn": (122, 275), "resnet18": (917, 1475)}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_step_launches_no_more_kernels_than_recorded(name, cupy_standin):
    """Small models on a GPU wait on launches, not arithmetic: one operation per kernel
    offset or per window position would multiply them."""
    trainer, x, y = _trainer(name)
    trainer.step(x[:8], y[:8])
    cupy_standin.reset()
    trainer.step(x[:8], y[:8])
    step = sum(cupy_standin.launches.values())
    cupy_standin.reset()
    pgd(trainer.model, x[:8], y[:8], 0.1, 0.02, 3)
    attack = sum(cupy_standin.launches.values())
    assert step <= LAUNCHES[name][0] and attack <= LAUNCHES[name][1], (step, attack)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_a_step_and_an_attack_make_no_relayout_copy(name, cupy_standin):
    """The CuPy kernels (the ``"cupy"`` pairs of :mod:`manualbp.ops`): every product reads its
    operands as they are, forward and backward, in training and in an attack on the mean model
    (evaluation mode, no draws)."""
    trainer, x, y = _trainer(name)
    trainer.step(x[:8], y[:8])
    cupy_standin.reset()
    trainer.step(x[:8], y[:8])
    assert dict(cupy_standin.relayouts) == {}
    with evaluating(trainer.model, noise=False):
        pgd(trainer.model, x[:8], y[:8], 0.1, 0.02, 2)
    assert dict(cupy_standin.relayouts) == {}


def test_the_noise_level_summary_reads_the_device_once(cupy_standin):
    from manualbp.model import noise_layers, sigma_summary
    trainer, _, _ = _trainer("cnn")
    layers = noise_layers(trainer.model)
    for k, layer in enumerate(layers.values()):
        layer.params["sigma"] *= 1 + k + trainer.bk.asarray(np.random.default_rng(k).random(layer.shape))
    cupy_standin.reset()
    summary = sigma_summary(trainer.model)
    assert sum(cupy_standin.syncs.values()) == 1
    for name, layer in layers.items():
        sigma = layer.sigma.get()
        assert summary[name] == pytest.approx({"mean": sigma.mean(), "std": sigma.std(), "min": sigma.min(),
                                               "max": sigma.max()}, rel=1e-6)
