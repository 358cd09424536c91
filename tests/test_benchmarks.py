"""Every benchmark script runs end to end (tiny settings) and writes its figures: the scripts are
how speed is shown, so they must not rot. Timings themselves are not asserted."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
RUNS = {                                   # id: script, its arguments, a key its figures must have
    "bench_mlp.py": ("bench_mlp.py", ["--repeats", "1"], "median_seconds"),
    "bench_cnn.py": ("bench_cnn.py", ["--rounds", "1", "--steps", "1"], "breakdown"),
    "bench_cnn.py-reference": ("bench_cnn.py", ["--rounds", "1", "--steps", "1", "--kernels", "reference"],
                               "breakdown"),
    "bench_resnet.py": ("bench_resnet.py", ["--models", "resnet18", "--rounds", "1", "--steps", "1"], None),
    "bench_pgd.py": ("bench_pgd.py", ["--images", "200", "--batch", "100", "--repeats", "1"], None),
    "bench_distributed.py": ("bench_distributed.py", ["--models", "mlpn", "--steps", "2", "--repeats", "1"], "many"),
}


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_benchmark_runs_and_writes_its_figures(torch, tmp_path, run):
    script, args, key = RUNS[run]
    kernels = args[args.index("--kernels") + 1] if "--kernels" in args else "fast"
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, script, *args, "--json", str(out)], cwd=ROOT / "benchmarks",
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures and (key is None or key in figures)
    assert figures["kernels"] == kernels
    assert "ratio" in done.stdout and kernels in done.stdout


def test_the_torch_side_is_the_twin_of_the_manualbp_model():
    """No benchmark writes its own PyTorch model: each takes the twin of its manualbp model."""
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        text = script.read_text()
        assert "torch.nn.Module" not in text and "torch.nn.Linear" not in text, script.name
        assert "torch_twin(" in text or "to_torch(" in text, script.name


@pytest.mark.slow
def test_resnet_on_cupy_without_cuda_torch_skips_the_torch_side(torch, monkeypatch, capsys, tmp_path):
    """CuPy beside a CPU build of PyTorch (the documented set-up): the PyTorch side is skipped with
    a line saying so, and ``torch.cuda.get_device_name`` is never called (here CuPy is stood in
    for by NumPy, the GPU's name by a made-up one)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_resnet

    def no_device_name(*args):
        raise AssertionError("torch.cuda.get_device_name called without CUDA")

    real = bench_resnet.get_backend
    monkeypatch.setattr(bench_resnet, "get_backend", lambda name, *args: real("numpy", *args))
    monkeypatch.setattr(bench_resnet, "gpu_name", lambda: "a GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_device_name)
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["bench_resnet.py", "--backend", "cupy", "--models", "resnet18-an",
                                      "--rounds", "1", "--steps", "1", "--batch", "2", "--json", str(out)])
    bench_resnet.main()
    assert "the PyTorch side is skipped" in capsys.readouterr().out
    (result,) = json.loads(out.read_text())["results"]
    assert result["torch"] is None and result["ratio"] is None and result["manualbp"] > 0
