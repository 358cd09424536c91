"""The paper's CIFAR-10 experiment (section 4.3, Table 5): ResNet18, ResNet18-MLP+, ResNet18-A+,
ResNet18-MLPN and ResNet18-AN with the FC head 256 -> 128 -> 10, Adam (lr 1e-3, weight decay 1e-4),
batch 128, 50 epochs (Table 1), on all 60,000 images split 4:1:1, with random crops (4-pixel
padding) and horizontal flips.

    python examples/cifar10_resnet18.py --backend cupy --out runs/cifar10
    python examples/cifar10_resnet18.py --variant resnet18-an --epochs 1 --limit-batches 5 --limit-eval 500   # CPU

Writes OUT/metrics.json (per variant: test accuracy with noise at evaluation on and off,
per-epoch history, seconds per epoch, learned sigma per layer) and prints a table.
"""
from manualbp import experiments


def main(argv=None):
    return experiments.main("resnet18", argv, __doc__)


if __name__ == "__main__":
    experiments.cli(main)
