"""The paper's MNIST CNN experiment (section 4.2, Table 4): CNN, CNN-MLP+, CNN-A+, CNN-MLPN, CNN-AN.

The network: conv 3x3 32 -> ReLU -> max-pool -> conv 3x3 64 -> ReLU -> max-pool -> FC 128 ->
FC 10; noise on the hidden fully connected layer ("-MLP") or also on both feature maps ("-A"),
fixed N(0, 1) ("+") or learned by Eq. (3) and (7) ("N"). Adam (lr 1e-3, weight decay 1e-4),
batch 128, 30 epochs (Table 1).

    python examples/mnist_cnn.py --backend numpy --dataset fashion-mnist --epochs 30 --out runs/cnn

Writes OUT/metrics.json (per variant: test accuracy with noise at evaluation on and off,
per-epoch history, seconds per epoch, learned sigma per layer) and prints a table.
"""
from manualbp import experiments


def main(argv=None):
    return experiments.main("cnn", argv, __doc__)


if __name__ == "__main__":
    experiments.cli(main)
