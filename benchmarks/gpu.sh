#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one run: the `gpu` tests, a short CuPy training run
# with resume, and the CuPy benchmarks (docs/performance.md records their figures with the
# GPU's name). Output goes to OUT, one file per part, and OUT/parts.txt lists each part's exit
# status and seconds. Each part has a time limit (the first column below; MANUALBP_GPU_LIMIT_SCALE
# multiplies them all), so that one slow part cannot starve the others: a part past its limit is
# stopped (status 124) and the next one starts. Each part runs even when an earlier one fails,
# and the exit status is that of the first failure. The limits add up to 520 s.
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
export PYTHONUNBUFFERED=1                    # a stopped part's output is kept up to where it stopped
scale=${MANUALBP_GPU_LIMIT_SCALE:-1}
: > "$out/parts.txt"
part() {  # part SECONDS NAME COMMAND...: run COMMAND for at most SECONDS x scale, output into OUT/NAME.txt
    local limit name=$2 start=$SECONDS
    limit=$(python3 -c "print(max(1, round($1 * $scale)))"); shift 2
    echo "== $name (at most $limit s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "$name rc=$rc seconds=$((SECONDS - start)) limit=$limit" | tee -a "$out/parts.txt"
    if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
}
part 10 gpu python3 -c "import cupy; print(cupy.cuda.runtime.getDeviceProperties(0)['name'].decode(), 'CuPy', cupy.__version__)"
part 220 tests python3 -m pytest -v -p no:cacheprovider -m gpu
run=(python3 examples/mnist_mlp.py --backend cupy --dataset fashion-mnist --variant mlpn --activation relu
     --out "$out/mlp-run")
part 40 train "${run[@]}" --epochs 2 --overwrite
part 30 resume "${run[@]}" --epochs 3 --resume
part 50 bench_mlp python3 benchmarks/bench_mlp.py --backend cupy --repeats 3 --sigma-rounds 10 --json "$out/bench_mlp.json"
part 50 bench_cnn python3 benchmarks/bench_cnn.py --backend cupy --json "$out/bench_cnn.json"
part 40 bench_pgd python3 benchmarks/bench_pgd.py --backend cupy --json "$out/bench_pgd.json"
part 80 bench_resnet python3 benchmarks/bench_resnet.py --backend cupy --json "$out/bench_resnet.json"
exit $status
