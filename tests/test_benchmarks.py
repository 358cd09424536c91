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
