"""The thread helpers: every call runs once whatever the thread count, and importing manualbp
before NumPy puts OpenBLAS's idle threads to sleep unless the user chose otherwise."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import checkout_env

from manualbp.parallel import parallel_blocks, run_all

PRINT_TIMEOUT = "import os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"


@pytest.mark.parametrize("threads", ["1", "2", "5"])
def test_run_all_runs_every_call_once(monkeypatch, threads):
    monkeypatch.setenv("MANUALBP_NUM_THREADS", threads)
    out = np.zeros(23)

    def fill(k):
        out[k] += k + 1

    run_all([lambda k=k: fill(k) for k in range(23)])
    np.testing.assert_array_equal(out, np.arange(1, 24))
    run_all([])                                                # nothing to do is fine


def test_run_all_passes_errors_on(monkeypatch):
    monkeypatch.setenv("MANUALBP_NUM_THREADS", "2")

    def fail():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_all([fail, fail, lambda: None])


@pytest.mark.parametrize("channels,batch", [(40, 3), (2, 50)])
def test_parallel_blocks_cover_everything_once(monkeypatch, channels, batch):
    import manualbp.parallel as parallel
    monkeypatch.setenv("MANUALBP_NUM_THREADS", "3")
    monkeypatch.setattr(parallel, "PARALLEL_MIN_SIZE", 0)
    hits = np.zeros((batch, channels), dtype=int)

    def work(cs, ns):
        hits[ns, cs] += 1

    parallel_blocks(np, channels, batch, hits.size, work)
    assert (hits == 1).all()


def _run(code, **env):
    environ = {k: v for k, v in checkout_env().items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, check=True).stdout.strip()


def test_importing_manualbp_first_lets_blas_threads_sleep():
    assert _run("import manualbp; " + PRINT_TIMEOUT) == "1"
    assert _run("import numpy, manualbp; " + PRINT_TIMEOUT) == "None"       # too late: untouched
    assert _run("import manualbp; " + PRINT_TIMEOUT, OPENBLAS_THREAD_TIMEOUT="7") == "7"


def _layers(bk):
    from manualbp.layers import BatchNorm1d, BatchNorm2d, GaussianNoise
    return [(BatchNorm2d(bk, 6), (4, 6, 5, 3)), (BatchNorm1d(bk, 7), (9, 7)),
            (GaussianNoise(bk, (6, 5, 3), learn_mean=True, sigma0=0.7), (4, 6, 5, 3)),
            (GaussianNoise(bk, (7,), sigma0=0.7), (9, 7))]


@pytest.mark.parametrize("training", [True, False])
def test_threaded_layers_give_the_serial_bits(monkeypatch, training):
    """Batch normalisation and noise layers split large work over threads: same numbers."""
    import manualbp.parallel as parallel
    from manualbp import get_backend
    results = []
    for threads in ("1", "3"):
        monkeypatch.setenv("MANUALBP_NUM_THREADS", threads)
        monkeypatch.setattr(parallel, "PARALLEL_MIN_SIZE", 0)
        bk, rng = get_backend("numpy", "float32", 4), np.random.default_rng(2)
        run = []
        for layer, shape in _layers(bk):
            layer.training = training
            if hasattr(layer, "eval_noise"):
                layer.eval_noise = True                       # noise drawn in both modes
            x = rng.standard_normal(shape).astype(np.float32)
            y = layer.forward(x)
            dx = layer.backward(rng.standard_normal(shape).astype(np.float32))
            run.append([y, dx, *layer.grads.values()])
        results.append(run)
    for serial, threaded in zip(*results):
        for a, b in zip(serial, threaded):
            np.testing.assert_array_equal(a, b)
