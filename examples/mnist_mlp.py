"""The paper's MNIST MLP experiment (section 4.2): MLP, MLP+ and MLPN, 784-100-50-10, with ReLU
and Sigmoid activations, Adam (lr 1e-3, weight decay 1e-4), batch 128, 30 epochs (Table 1).

    python examples/mnist_mlp.py --backend numpy --dataset fashion-mnist --epochs 30 --out runs/mlp

Writes OUT/metrics.json (per variant and activation: test accuracy with noise at evaluation on
and off, per-epoch history, seconds per epoch, learned sigma per layer) and prints a table.
"""
from manualbp import experiments


def main(argv=None):
    return experiments.main("mlp", argv, __doc__)


if __name__ == "__main__":
    experiments.cli(main)
