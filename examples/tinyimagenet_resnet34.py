"""The paper's Tiny-ImageNet experiment (section 4.4, Table 6): ResNet34, ResNet34-MLP+,
ResNet34-A+, ResNet34-MLPN and ResNet34-AN with the FC head 1024 -> 512 -> 256 -> 200, SGD (lr 1e-2,
momentum 0.9, weight decay 5e-4, lr x0.8 every 20 epochs), batch 128, 80 epochs (Table 1), on the
110,000 labelled images split 10:1:1, with random crops (4-pixel padding) and horizontal flips.

    python examples/tinyimagenet_resnet34.py --backend cupy --out runs/tiny-imagenet
    python examples/tinyimagenet_resnet34.py --variant resnet34-an --epochs 1 --limit-batches 2 --limit-eval 200   # CPU

Writes OUT/metrics.json (per variant: test accuracy with noise at evaluation on and off,
per-epoch history, seconds per epoch, learned sigma per layer) and prints a table.
"""
from manualbp import experiments


def main(argv=None):
    return experiments.main("resnet34", argv, __doc__)


if __name__ == "__main__":
    experiments.cli(main)
