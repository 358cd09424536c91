"""Data-parallel training over MPI: ``mpiexec -n 2`` runs of tests/mpi_scenarios.py and of a
training example, compared with the same work done by one process (the ``mpiexec`` fixture
skips them when mpi4py or ``mpiexec`` is missing: ``pip install -e '.[mpi]'``).
"""
import json
import os
import subprocess
import sys

import mpi_scenarios as sc
import numpy as np
import pytest

from conftest import ROOT, checkout_env

from manualbp import distributed, get_backend, held_noise
from manualbp.model import noise_layers


@pytest.fixture
def launch(mpiexec):
    """``launch(ranks, script, *args)``: run a Python script from the repository root on
    ``ranks`` ranks (``None``: without MPI); the finished process. ``threads``: each process's
    thread count (manualbp's and OpenBLAS's), else the ranks share the cores."""
    def run(ranks, *args, timeout=180, threads=None):
        env = checkout_env()
        if threads is not None:
            env.update(MANUALBP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
        command = [sys.executable, *map(str, args)]
        if ranks is not None:
            command = [mpiexec, "-n", str(ranks), *command]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def scenario(launch, tmp_path):
    """``scenario(name)``: run tests/mpi_scenarios.py's ``name`` on 2 ranks; rank 0's arrays."""
    def run(name):
        done = launch(2, "tests/mpi_scenarios.py", name, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        with np.load(tmp_path / f"{name}.npz") as result:
            return dict(result)
    return run


class FakeComm(distributed.Communicator):
    """The shard arithmetic of a rank, without MPI."""

    def __init__(self, rank, size):
        self.rank, self.size, self.is_root = rank, size, rank == 0


@pytest.mark.parametrize("n, size", [(10, 3), (12, 2), (2, 3), (0, 2), (7, 1)])
def test_shards_cover_the_batch_once(n, size):
    parts = [FakeComm(r, size).shard(n) for r in range(size)]
    covered = [i for p in parts for i in range(n)[p]]
    assert covered == list(range(n))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


class TwoRanksAlike:
    """The collectives of two ranks that hold the same values (a sum doubles them)."""
    IN_PLACE, SUM = object(), "sum"

    def Allreduce(self, where, array, op):
        assert where is self.IN_PLACE and op == self.SUM
        array *= 2

    def allgather(self, value):
        return [value, value]


class DeviceStandIn:
    """A backend named "cupy" whose arrays live on the host, counting its transfers."""
    name = "cupy"

    def __init__(self):
        self.copies = 0

    def to_host(self, a):
        self.copies += 1
        return np.array(a)

    def asarray(self, a, dtype=None):
        self.copies += 1
        return np.asarray(a, dtype=dtype)

    def synchronize(self):
        pass


def alike_comm():
    comm = FakeComm(0, 2)
    comm.comm = comm.MPI = TwoRanksAlike()
    comm.transport = None
    return comm


@pytest.mark.parametrize("cuda_aware, nccl, expected", [(True, True, "cuda-aware mpi"), (False, True, "nccl"),
                                                        (False, False, "mpi via host copies")])
def test_device_arrays_take_the_first_transport_every_rank_offers(monkeypatch, cuda_aware, nccl, expected):
    monkeypatch.setattr(distributed, "mpi_has_cuda", lambda: cuda_aware)
    monkeypatch.setattr(distributed.Communicator, "_nccl_ready", lambda self, bk: nccl)
    comm, bk = alike_comm(), DeviceStandIn()
    assert comm.transport_for(bk) == expected
    assert alike_comm().transport_for(get_backend("numpy")) == "mpi"


def test_host_copies_sum_in_place(monkeypatch):
    monkeypatch.setattr(distributed, "mpi_has_cuda", lambda: False)
    monkeypatch.setattr(distributed.Communicator, "_nccl_ready", lambda self, bk: False)
    comm, bk = alike_comm(), DeviceStandIn()
    grad = np.arange(5, dtype=np.float32)
    assert comm.allreduce(bk, grad) is grad
    np.testing.assert_array_equal(grad, 2 * np.arange(5))
    assert bk.copies == 2 and comm.transport == "mpi via host copies"


def test_mpi_reports_whether_it_reads_device_memory():
    assert distributed.mpi_has_cuda() in (True, False)


def test_connect_without_mpi4py_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setattr(distributed, "_active", None)
    with pytest.raises(distributed.DistributedError, match=r"pip install -e '\.\[mpi\]'"):
        distributed.connect()


@pytest.mark.parametrize("name", sorted(sc.EQUIVALENCE))
def test_two_ranks_take_the_steps_of_one_process(scenario, name):
    """Noise off, float64: K = 2 with B/2 images per rank gives the parameters of K = 1 with B
    images after 3 steps (and after an epoch whose last batch leaves one rank without images),
    and the evaluation's sums over both shards give the same accuracy."""
    result = scenario(name)
    n, limit = sc.EQUIVALENCE[name]
    bk = get_backend("numpy", "float64", 0)
    model = sc.mlp_model(bk, "mlp")
    t = sc.trainer(model, None, limit_batches=limit)
    loss = t.train_epoch(*sc.on_device(bk, *sc.data(n)))
    test_loss, test_acc = t.evaluate(*sc.on_device(bk, *sc.data(sc.TEST_IMAGES, seed=4)))
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(result[name], value, rtol=1e-12, atol=1e-14, err_msg=name)
    assert float(result["test_accuracy"]) == test_acc
    np.testing.assert_allclose([result["loss"], result["test_loss"]], [loss, test_loss], rtol=1e-12)
    start = sc.mlp_model(bk, "mlp").state_dict()
    assert any(not np.allclose(start[k], v) for k, v in model.state_dict().items())   # it trained


def test_all_reduced_sigma_gradient_is_the_batch_eq3_sum(scenario):
    """Learned noise: the all-reduced dL/dsigma (and every other gradient) equals the gradient
    of the whole batch with the ranks' own draws replayed, i.e. the sum of the ranks' Eq. (3)."""
    result = scenario("sigma_gradient")
    bk = get_backend("numpy", "float64", 0, kernels="reference")
    model = sc.mlp_model(bk, "mlpn").train()
    x, y = sc.data()
    idx = np.concatenate([result["idx/0"], result["idx/1"]])
    assert len(result["idx/0"]) == len(result["idx/1"]) == sc.BATCH // 2
    assert sorted(idx) == sorted(set(idx))
    for name, layer in noise_layers(model).items():
        draws = [result[f"eps/{r}/{name}.eps"] for r in (0, 1)]
        assert not np.allclose(draws[0], draws[1])                  # independent streams per rank
        layer.eps = bk.asarray(np.concatenate(draws))
    with held_noise(model):
        logits = model.forward(bk.asarray(x[idx]))
        t = sc.trainer(model, None, optimizers=[])
        t.loss.forward(logits, bk.asarray(y[idx], dtype="int64"))
        model.backward(t.loss.backward())
    grads = model.named_gradients()
    assert any(k.endswith("sigma") for k in grads)
    for name, value in grads.items():
        np.testing.assert_allclose(result[f"grad/{name}"], value, rtol=1e-12, atol=1e-15, err_msg=name)


def test_running_statistics_are_averaged_over_ranks(scenario):
    result = scenario("batch_norm")
    for key in ("running_mean", "running_var"):
        before = [result[f"before/{r}/{key}"] for r in (0, 1)]
        assert not np.allclose(before[0], before[1])                # per-rank batch statistics
        np.testing.assert_allclose(result[f"after/{key}"], (before[0] + before[1]) / 2, rtol=1e-14)


def test_resume_under_mpi_is_exact_and_runs_repeat_bit_for_bit(scenario):
    result = scenario("resume")
    names = [k.split("/", 1)[1] for k in result if k.startswith("straight/")]
    for name in names:
        np.testing.assert_array_equal(result[f"again/{name}"], result[f"straight/{name}"], err_msg=name)
        np.testing.assert_array_equal(result[f"resumed/{name}"], result[f"straight/{name}"], err_msg=name)
    assert any("sigma" in n for n in names) and any("running_var" in n for n in names)


def test_ranks_whose_parameters_differ_stop_with_a_clear_error(launch, tmp_path):
    done = launch(2, "tests/mpi_scenarios.py", "diverged", tmp_path, timeout=60)
    assert done.returncode != 0
    assert "the ranks' parameters differ in the test" in done.stderr


def test_a_rank_that_raises_ends_the_job_with_its_message(launch, tmp_path):
    done = launch(2, "tests/mpi_scenarios.py", "raises", tmp_path, timeout=60)
    assert done.returncode != 0
    assert "a failure on rank 1 only" in done.stderr


def test_training_example_under_mpiexec(launch, fashion_mnist, tmp_path):
    """``mpiexec -n 2 examples/mnist_mlp.py --distributed``: rank 0 alone writes, the log names
    the transport, ``--resume`` continues exactly, and one rank gives the run without MPI."""
    quick = ["--dataset", "fashion-mnist", "--variant", "mlpn", "--activation", "relu", "--limit-train", "600",
             "--limit-eval", "201", "--batch-size", "64", "--no-progress"]

    def run(ranks, out, *more):
        flag = [] if ranks is None else ["--distributed"]
        done = launch(ranks, "examples/mnist_mlp.py", *quick, "--out", out, *flag, *more)
        assert done.returncode == 0, done.stderr[-3000:]
        with open(os.path.join(out, "metrics.json")) as f:
            return json.load(f), done.stdout

    def same_run(a, b):
        for key in ("test_accuracy", "test_accuracy_noise_on", "test_accuracy_noise_off", "sigma"):
            assert a["results"][0][key] == b["results"][0][key], key
        strip = [{k: v for k, v in h.items() if k != "seconds"} for h in a["results"][0]["history"]]
        assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in b["results"][0]["history"]]

    straight, log = run(2, tmp_path / "straight", "--epochs", "2")
    assert straight["ranks"] == 2 and log.count("epoch   2/2") == 1
    assert "gradients all-reduced by mpi" in log
    assert sorted(os.listdir(tmp_path / "straight" / "checkpoints")) == ["mlpn-relu.npz"]
    run(2, tmp_path / "resumed", "--epochs", "1")
    resumed, _ = run(2, tmp_path / "resumed", "--epochs", "2", "--resume")
    same_run(resumed, straight)
    refused = launch(1, "examples/mnist_mlp.py", *quick, "--out", tmp_path / "resumed", "--epochs", "3",
                      "--resume", "--distributed")
    assert refused.returncode == 2 and "written by 2 ranks, this run has 1" in refused.stderr
    one, _ = run(1, tmp_path / "one", "--epochs", "1")
    alone, _ = run(None, tmp_path / "alone", "--epochs", "1")
    same_run(one, alone)


def test_robustness_table_spread_over_ranks_is_the_table_of_one_process(launch, fashion_mnist, tmp_path):
    """``robustness_table.py --distributed`` on 2 ranks: every model trained by one rank, the
    white-box cells split by variant, one table from rank 0 -- equal to one process's, cell for
    cell, when every process runs one thread (OpenBLAS's sums depend on its thread count)."""
    quick = ["--family", "mlp", "--epochs", "1", "--limit-train", "300", "--limit-eval", "40", "--draws", "2",
             "--eot-draws", "2", "--sweep-steps", "2", "--no-progress"]
    tables = {}
    for ranks, flag in ((None, []), (2, ["--distributed"])):
        out = tmp_path / str(ranks)
        done = launch(ranks, "examples/robustness_table.py", *quick, "--out", out, *flag, timeout=300, threads=1)
        assert done.returncode == 0, done.stderr[-3000:]
        with open(out / "robustness.json") as f:
            tables[ranks] = json.load(f)
        assert sorted(os.listdir(out / "checkpoints")) == sorted(
            ["surrogate.npz"] + [f"{v}-{a}.npz" for v in ("mlp", "mlp+", "mlpn") for a in ("relu", "sigmoid")])
    one, two = tables[None], tables[2]
    assert two["meta"]["ranks"] == 2
    for key in ("values", "claims", "sanity_checks", "sweep", "runs"):
        assert one[key] == two[key], key
