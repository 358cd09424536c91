"""Every benchmark script runs end to end (tiny settings) and writes its figures: the scripts are
how speed is shown, so they must not rot. Timings themselves are not asserted."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, STANDIN_DIR, checkout_env

RUNS = {                                   # id: script, its arguments, a key its figures must have
    "bench_mlp.py": ("bench_mlp.py", ["--repeats", "1", "--images", "2560", "--sigma-rounds", "1"], "median_seconds"),
    "bench_cnn.py": ("bench_cnn.py", ["--rounds", "1", "--steps", "1", "--epochs", "1", "--images", "256"],
                     "median_epoch_seconds"),
    "bench_cnn.py-reference": ("bench_cnn.py", ["--rounds", "1", "--steps", "1", "--kernels", "reference"],
                               "breakdown"),
    "bench_resnet.py": ("bench_resnet.py", ["--models", "resnet18", "--rounds", "1", "--steps", "1", "--batch", "8"], None),
    "bench_pgd.py": ("bench_pgd.py", ["--images", "100", "--batch", "50", "--repeats", "1"], None),
    "bench_distributed.py": ("bench_distributed.py", ["--models", "mlpn", "--steps", "2", "--repeats", "1"], "many"),
    "bench_torchvision.py": ("bench_torchvision.py", ["--models", "mobilenet_v2", "--rounds", "1", "--steps", "1",
                                                      "--batch", "2"], "models"),
}


@pytest.mark.slow
@pytest.mark.parametrize("run", sorted(RUNS))
def test_benchmark_runs_and_writes_its_figures(torch, tmp_path, run):
    script, args, key = RUNS[run]
    kernels = args[args.index("--kernels") + 1] if "--kernels" in args else "fast"
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, script, *args, "--json", str(out)], cwd=ROOT / "benchmarks",
                          capture_output=True, text=True, env=checkout_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures and (key is None or key in figures)
    assert figures["kernels"] == kernels
    assert "ratio" in done.stdout and kernels in done.stdout


#: Each benchmark's quickest arguments with ``--backend cupy``.
CUPY_RUNS = {"bench_mlp.py": ["--repeats", "1", "--images", "1280", "--sigma-rounds", "1"],
             "bench_cnn.py": ["--rounds", "1", "--steps", "1", "--epochs", "1", "--images", "256"],
             "bench_pgd.py": ["--models", "mlp", "--images", "100", "--batch", "100", "--repeats", "1"],
             "bench_resnet.py": ["--models", "resnet18", "--rounds", "1", "--steps", "1", "--batch", "2"]}


@pytest.mark.slow
@pytest.mark.cupy_api
@pytest.mark.parametrize("script", sorted(CUPY_RUNS))
def test_benchmark_on_cupy_beside_torch_without_cuda_times_manualbp_alone(torch, tmp_path, script):
    """CuPy API conformance (the stand-in of ``tests/standin`` first on ``PYTHONPATH``; not a
    GPU): with ``--backend cupy`` beside a PyTorch that sees no CUDA, each benchmark names the GPU,
    says that the PyTorch side is skipped and times manualbp alone."""
    env = checkout_env(STANDIN_DIR, CUDA_VISIBLE_DEVICES="")
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, script, "--backend", "cupy", *CUPY_RUNS[script], "--json", str(out)],
                          cwd=ROOT / "benchmarks", capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "has no CUDA here: the PyTorch side is skipped" in done.stdout
    assert "CuPy stand-in" in done.stdout
    assert json.loads(out.read_text())["backend"] == "cupy"


def test_the_torch_side_is_the_twin_of_the_manualbp_model():
    """No benchmark writes its own PyTorch model: each takes the twin of its manualbp model, or
    the manualbp model is the import of a PyTorch model (torchvision's)."""
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        text = script.read_text()
        assert "torch.nn.Module" not in text and "torch.nn.Linear" not in text, script.name
        assert "torch_twin(" in text or "to_torch(" in text or "from_torch(" in text, script.name


#: Runs a script with its flags parsed and nothing else: ``python -c PARSE_ONLY script args...``.
PARSE_ONLY = """
import argparse, os, runpy, sys
parse = argparse.ArgumentParser.parse_args
def parse_only(self, *args, **kwargs):
    parse(self, *args, **kwargs)
    sys.exit(0)
argparse.ArgumentParser.parse_args = parse_only
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_gpu_script_runs_every_part_with_flags_its_script_takes(tmp_path):
    """``benchmarks/gpu.sh`` is run where GPU time is short: with a stand-in ``timeout`` that
    records each part's command instead of running it, the script runs through (its shell is
    sound), lists its eight parts, and every Python script among them accepts its flags."""
    stub = tmp_path / "bin" / "timeout"
    stub.parent.mkdir()
    stub.write_text('#!/usr/bin/env bash\nshift 3\nprintf "%s\\0" "$@" >> "$RECORD"; printf "\\n" >> "$RECORD"\n')
    stub.chmod(0o755)
    record, out = tmp_path / "commands", tmp_path / "out"
    env = checkout_env(PATH=f"{stub.parent}{os.pathsep}{os.environ['PATH']}", RECORD=str(record))
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), str(out)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    parts = [line.split()[0] for line in (out / "parts.txt").read_text().splitlines()]
    assert parts == ["gpu", "tests", "train", "resume", "bench_mlp", "bench_cnn", "bench_pgd", "bench_resnet"]
    commands = [line.strip("\0").split("\0") for line in record.read_text().splitlines()]
    scripts = [c for c in commands if c[0] == "python3" and c[1].endswith(".py")]
    assert len(scripts) == 6
    parsing = [subprocess.Popen([sys.executable, "-c", PARSE_ONLY, *command[1:]], cwd=ROOT, text=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=checkout_env(STANDIN_DIR))
               for command in scripts]                                  # all at once
    for command, process in zip(scripts, parsing):
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, (command, stderr[-2000:])
