"""The paper's Tiny-ImageNet experiment (section 4.4, Table 6): ResNet34, ResNet34-MLP+,
ResNet34-A+, ResNet34-MLPN and ResNet34-AN with the FC head 1024 -> 512 -> 256 -> 200, SGD (lr 1e-2,
momentum 0.9, weight decay 5e-4, lr x0.8 every 20 epochs), batch 128, 80 epochs (Table 1), on the
110,000 labelled images split 10:1:1, with random crops (4-pixel padding) and horizontal flips.

    python examples/tinyimagenet_resnet34.py --backend cupy --out runs/tiny-imagenet
    python examples/tinyimagenet_resnet34.py --variant resnet34-an --epochs 1 --limit-batches 2 --limit-eval 200   # CPU

Writes OUT/metrics.json (per variant: test accuracy with noise at evaluation on and off,
per-epoch history, seconds per epoch, learned sigma per layer) and prints a table.
"""
import argparse

from manualbp import experiments
from manualbp.data import random_crop_flip
from manualbp.zoo import RESNET34_VARIANTS, resnet34


def build_for(args):
    def build(bk, variant, activation=None):
        return resnet34(bk, variant, "tiny-imagenet", width=args.width)
    return build


def main(argv=None):
    parser = experiments.add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]),
                                       RESNET34_VARIANTS, preset="tiny-imagenet",
                                       datasets=("tiny-imagenet",))
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="train on only this many batches per epoch (quick CPU runs)")
    parser.add_argument("--limit-eval", type=int, default=None,
                        help="evaluate on only this many validation and test images (quick CPU runs)")
    parser.add_argument("--eval-batch-size", type=int, default=250)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    args = parser.parse_args(argv)
    return experiments.run(args, build_for(args), RESNET34_VARIANTS,
                           augment=random_crop_flip if args.augment else None)


if __name__ == "__main__":
    main()
