#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run: the `gpu` tests, a short CuPy training run
# with resume, and the CuPy benchmarks (docs/performance.md records their figures with the
# GPU's name). Output goes to OUT; each part runs even when an earlier one fails, and the exit
# status is that of the first failure.
#
#   bash benchmarks/gpu.sh OUT [DATA]
#
# DATA: a folder holding fashion-mnist/ with its four IDX files, on a machine without the
# system copy under /usr/share/datasets/fashion-mnist (it becomes $MANUALBP_DATA).
# manualbp runs from this checkout (PYTHONPATH), installed or not: a GPU machine needs only
# NumPy, SciPy, Matplotlib, tqdm, Pillow, CuPy, pytest and, for the comparisons, PyTorch.
set -u
out=${1:?usage: bash benchmarks/gpu.sh OUT [DATA]}
if [ -n "${2:-}" ]; then export MANUALBP_DATA="$(cd "$2" && pwd)"; fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
status=0
part() {  # part NAME COMMAND...: run COMMAND, its output into OUT/NAME.txt
    local name=$1; shift
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
part gpu python3 -c "import cupy; print(cupy.cuda.runtime.getDeviceProperties(0)['name'].decode(), 'CuPy', cupy.__version__)"
part tests python3 -m pytest -q -p no:cacheprovider -m gpu
run=(python3 examples/mnist_mlp.py --backend cupy --dataset fashion-mnist --variant mlpn --activation relu
     --out "$out/mlp-run")
part train "${run[@]}" --epochs 2 --overwrite
part resume "${run[@]}" --epochs 3 --resume
part bench_mlp python3 benchmarks/bench_mlp.py --backend cupy --json "$out/bench_mlp.json"
part bench_cnn python3 benchmarks/bench_cnn.py --backend cupy --json "$out/bench_cnn.json"
part bench_pgd python3 benchmarks/bench_pgd.py --backend cupy --json "$out/bench_pgd.json"
part bench_resnet python3 benchmarks/bench_resnet.py --backend cupy --json "$out/bench_resnet.json"
exit $status
