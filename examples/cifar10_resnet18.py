"""The paper's CIFAR-10 experiment (section 4.3, Table 5): ResNet18, ResNet18-MLP+, ResNet18-A+,
ResNet18-MLPN and ResNet18-AN with the FC head 256 -> 128 -> 10, Adam (lr 1e-3, weight decay 1e-4),
batch 128, 50 epochs (Table 1), on all 60,000 images split 4:1:1, with random crops (4-pixel
padding) and horizontal flips.

    python examples/cifar10_resnet18.py --backend cupy --out runs/cifar10
    python examples/cifar10_resnet18.py --variant resnet18-an --epochs 1 --limit-batches 5 --limit-eval 500   # CPU

Writes OUT/metrics.json (per variant: test accuracy with noise at evaluation on and off,
per-epoch history, seconds per epoch, learned sigma per layer) and prints a table.
"""
import argparse

from manualbp import experiments
from manualbp.data import random_crop_flip
from manualbp.zoo import RESNET18_VARIANTS, resnet18


def build_for(args):
    def build(bk, variant, activation=None):
        return resnet18(bk, variant, "cifar10", width=args.width)
    return build


def main(argv=None):
    parser = experiments.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                       RESNET18_VARIANTS, preset="cifar10", datasets=("cifar10",))
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="train on only this many batches per epoch (quick CPU runs)")
    parser.add_argument("--limit-eval", type=int, default=None,
                        help="evaluate on only this many validation and test images (quick CPU runs)")
    parser.add_argument("--eval-batch-size", type=int, default=250)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    args = parser.parse_args(argv)
    return experiments.run(args, build_for(args), RESNET18_VARIANTS,
                           augment=random_crop_flip if args.augment else None)


if __name__ == "__main__":
    main()
