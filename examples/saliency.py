"""SmoothGrad saliency maps (the paper's Fig. 4, Eq. 8) for every noise variant of a model.

    python examples/mnist_mlp.py --dataset fashion-mnist --out runs/mlp        # checkpoints
    python examples/saliency.py --checkpoints runs/mlp/checkpoints --out runs/saliency

Families: mlp and cnn (Fashion-MNIST / MNIST), resnet18 (CIFAR-10), resnet34 (Tiny-ImageNet, the
paper's figure). Loads OUT/checkpoints/<variant>-<activation>.npz (MLP) or <variant>.npz as
written by the training examples; a variant without a checkpoint is trained here for --epochs
epochs. Picks the first --images test images that every model classifies correctly (or, failing that, that most
models do) and writes OUT/saliency.png (image, then one map per model: the mean squared
gradient of the true class score over 25 noisy copies, noise 0.15 of the image's range) and
OUT/saliency.json.
"""
import argparse
import os

from manualbp import datasets, experiments, get_backend
from manualbp.checkpoint import write_json
from manualbp.model import evaluating
from manualbp.plots import saliency_grid
from manualbp.saliency import smoothgrad
from manualbp.zoo import get_family, model_name

#: family (of manualbp.zoo.FAMILIES) -> default dataset
DATASETS = {"mlp": "fashion-mnist", "cnn": "fashion-mnist", "resnet18": "cifar10",
            "resnet34": "tiny-imagenet"}


#: Test images searched for ones every model classifies correctly (at most; see --limit-eval).
CANDIDATES = 1000


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=experiments.HELP_FORMAT)
    p.add_argument("--family", choices=list(DATASETS), default="mlp")
    p.add_argument("--activation", choices=["relu", "sigmoid"], default="relu", help="MLP only")
    p.add_argument("--checkpoints", default=None, help="directory of the training example's checkpoints")
    p.add_argument("--dataset", choices=list(datasets.DATASETS), default=None,
                   help="default: fashion-mnist (mlp, cnn), cifar10 (resnet18), tiny-imagenet (resnet34)")
    p.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    p.add_argument("--images", type=int, default=4, help="test images shown")
    p.add_argument("--samples", type=int, default=25, help="noisy copies per image (n of Eq. 8)")
    p.add_argument("--noise", type=float, default=0.15, help="noise level relative to the image range")
    p.add_argument("--epochs", type=int, default=2, help="training epochs where no checkpoint exists")
    experiments.add_backend_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the split, training and the noisy copies")
    p.add_argument("--out", default="runs/saliency", help="folder of saliency.png and saliency.json")
    experiments.add_quick_run_arguments(p, evaluation=f"test images searched (at most {CANDIDATES})")
    args = p.parse_args(argv)
    args.dataset = args.dataset or DATASETS[args.family]
    check(args)
    return args


def check(args):
    """Refuse bad flags before any work (one line each, see :func:`manualbp.experiments.cli`)."""
    require = experiments.require
    experiments.check_at_least_one(args, "images", "samples", "epochs", "limit_batches", "limit_train",
                                   "limit_eval")
    require(args, args.seed >= 0, "seed", "a non-negative integer")
    require(args, experiments.finite(args.noise) and args.noise >= 0, "noise", "a non-negative finite number")
    try:
        get_family(args.family, args.dataset)
    except ValueError as err:
        raise experiments.SettingError(f"--dataset {args.dataset!r}: {err}") from None
    experiments.check_distributed(args)
    experiments.check_out(args)


def load_or_train(bk, args, variant, splits):
    """The trained model of ``variant``: from its checkpoint if there is one, else trained now
    with the dataset's Table 1 set-up for ``--epochs`` epochs."""
    family = get_family(args.family)
    activation = args.activation if family.activations != (None,) else None
    build = lambda b, **more: family.model(b, variant, activation, args.dataset, **more)  # noqa: E731
    training = {**datasets.get_dataset(args.dataset).training, "epochs": args.epochs}
    model, _ = experiments.load_or_train(bk, build, model_name(variant, activation), splits, training, args.seed,
                                         args.checkpoints, limit_batches=args.limit_batches)
    return model


def pick_images(models, x, y, count):
    """The first ``count`` images that every model classifies correctly (as in the paper); when
    there are not enough, those that most models get right. Returns indices and, per image, how
    many models classify it correctly."""
    xp = next(iter(models.values())).xp
    hits = 0
    for model in models.values():
        with evaluating(model):
            hits = hits + (model.forward(x).argmax(axis=1) == y).astype("int64")
    order = xp.argsort(-hits, kind="stable")[:count]
    return [int(i) for i in order], [int(hits[i]) for i in order]


def main(argv=None):
    args = parse_args(argv)
    bk = get_backend(args.backend, "float32", args.seed, args.kernels)
    splits = datasets.load_splits(bk, args.dataset, args.data_dir, args.seed, args.limit_train,
                                  min(CANDIDATES, args.limit_eval or CANDIDATES))
    models = {v.upper(): load_or_train(bk, args, v, splits) for v in get_family(args.family).variants}
    x_test, y_test = splits["test"]
    index, correct = pick_images(models, x_test, y_test, args.images)
    x, y = x_test[index], y_test[index]
    maps = {label: smoothgrad(model, x, y, args.samples, args.noise, seed=args.seed)[0]
            for label, model in models.items()}
    classes = datasets.get_dataset(args.dataset).class_names
    names = [classes[c] if classes else f"class {c}" for c in map(int, bk.to_host(y))]
    path = saliency_grid(x, maps, os.path.join(args.out, "saliency.png"), names=names)
    write_json(os.path.join(args.out, "saliency.json"),
               {"dataset": args.dataset, "family": args.family, "activation": args.activation,
                "test_indices": index, "labels": [int(c) for c in bk.to_host(y)], "models_correct": correct,
                "samples": args.samples, "noise": args.noise, "models": list(maps)})
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    experiments.cli(main)
