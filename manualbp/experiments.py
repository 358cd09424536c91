"""The shared runner behind the example scripts: data, Table 1 set-ups, training every variant,
evaluation with noise on and off, ``metrics.json`` and a printed table.

An example script only names its models (a ``build(bk, variant, activation)`` function, the
variant names) and its data; everything else is here so every experiment reports alike.
"""
import argparse
import json
import os
import time
from functools import partial

from .backend import BACKENDS, KERNELS, get_backend
from .data import load_cifar10, load_mnist, load_tiny_imagenet, random_crop_flip, split_dataset
from .model import noise_layers, sigma_summary
from .optim import SGD, Adam, StepLR, is_noise_level, noise_level_optimizer
from .train import Trainer

# Table 1 of the paper: optimiser, learning rate, L2 weight decay, epochs, batch size, lr decay.
PRESETS = {
    "mnist": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 30, "batch_size": 128},
    "cifar10": {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 50, "batch_size": 128},
    "tiny-imagenet": {"optimizer": "sgd", "lr": 1e-2, "momentum": 0.9, "weight_decay": 5e-4,
                      "epochs": 80, "batch_size": 128, "decay_every": 20, "decay_gamma": 0.8},
}
# The paper's split of all images into train / validation / test (sections 4.2-4.4: 5:1:1 for
# MNIST, 4:1:1 for CIFAR-10, 10:1:1 for the 110,000 labelled Tiny-ImageNet images).
SPLITS = {"mnist": (5, 1, 1), "fashion-mnist": (5, 1, 1), "cifar10": (4, 1, 1), "tiny-imagenet": (10, 1, 1)}
LOADERS = {"mnist": partial(load_mnist, "mnist"), "fashion-mnist": partial(load_mnist, "fashion-mnist"),
           "cifar10": load_cifar10, "tiny-imagenet": load_tiny_imagenet}


def make_optimizers(model, optimizer="adam", lr=1e-3, weight_decay=1e-4, momentum=0.9,
                    decay_every=None, decay_gamma=1.0, sigma_lr=1e-3, sigma_update="eq7", **_):
    """The weights' optimiser (Table 1) and, for learned noise, the noise-level optimiser.

    ``sigma_update="eq7"`` (the paper): ``sigma`` gets its own Adam followed by ``abs`` (Eq. 7).
    ``"weights"`` (the paper's released code): ``sigma`` is trained by the weights' optimiser, with
    its weight decay, and used as ``|sigma|`` in the forward pass.
    Returns ``(optimizers, schedule)``.
    """
    if sigma_update not in ("eq7", "weights"):
        raise ValueError(f"unknown sigma_update {sigma_update!r}: expected 'eq7' or 'weights'")
    separate = sigma_update == "eq7"
    if not separate:
        for layer in noise_layers(model).values():
            layer.abs_sigma = True
    select = (lambda name: not is_noise_level(name)) if separate else None
    if optimizer == "adam":
        weights = Adam(model, lr, weight_decay=weight_decay, select=select)
    elif optimizer == "sgd":
        weights = SGD(model, lr, momentum=momentum, weight_decay=weight_decay, select=select)
    else:
        raise ValueError(f"unknown optimizer {optimizer!r}: expected 'adam' or 'sgd'")
    optimizers = [weights, noise_level_optimizer(model, sigma_lr) if separate else None]
    schedule = StepLR(optimizers, decay_every, decay_gamma) if decay_every else None
    return optimizers, schedule


def load_splits(bk, dataset, data_dir=None, seed=0):
    """The dataset split as in the paper, moved to the backend: ``{"train": (x, y), ...}``
    (uint8 images become pixels in ``[0, 1]``, one split at a time)."""
    if dataset not in SPLITS:
        raise ValueError(f"unknown dataset {dataset!r}: expected one of {', '.join(SPLITS)}")
    data = LOADERS[dataset](data_dir=data_dir)
    splits = split_dataset(data, SPLITS[dataset], seed=seed)
    return {name: (_pixels(bk, x), bk.asarray(y, dtype="int64")) for name, (x, y) in splits.items()}


def _pixels(bk, x):
    out = bk.asarray(x)
    if x.dtype == "uint8":
        out /= 255
    return out


def checkpoint_name(variant, activation=None):
    """The checkpoint file of a variant: ``<variant>-<activation>.npz`` (MLPs) or ``<variant>.npz``."""
    return f"{variant}-{activation}.npz" if activation else f"{variant}.npz"


def run_variant(bk, build, variant, activation, splits, args, checkpoint_dir=None, log=print,
                augment=None):
    """Train one model variant and evaluate it; returns its entry of ``metrics.json``."""
    bk.seed([args.seed, 0xC0DE])
    model = build(bk, variant, activation)
    optimizers, schedule = make_optimizers(model, **vars(args))
    trainer = Trainer(model, optimizers, schedule, batch_size=args.batch_size, seed=args.seed,
                      augment=augment, limit_batches=getattr(args, "limit_batches", None),
                      eval_batch_size=getattr(args, "eval_batch_size", 1000), progress=args.progress)
    path = None
    if checkpoint_dir:
        path = os.path.join(checkpoint_dir, checkpoint_name(variant, activation))
    history = trainer.fit(splits, args.epochs, checkpoint_path=path, resume=args.resume, log=log)
    x, y = splits["test"]
    on = trainer.evaluate(x, y, noise=True)[1]
    off = trainer.evaluate(x, y, noise=False)[1]
    default = trainer.evaluate(x, y)[1]
    eval_noise = {name: layer.eval_noise for name, layer in noise_layers(model).items()}
    return {"variant": variant, "activation": activation,
            "test_accuracy": default, "test_accuracy_noise_on": on, "test_accuracy_noise_off": off,
            "eval_noise_default": any(eval_noise.values()),
            "seconds_per_epoch": sum(h["seconds"] for h in history) / max(1, len(history)),
            "history": history, "sigma": sigma_summary(model), "checkpoint": path}


def add_kernels_argument(parser):
    """``--kernels {fast,reference}`` (the ``kernels`` of :func:`manualbp.get_backend`)."""
    parser.add_argument("--kernels", choices=list(KERNELS), default="fast",
                        help="fast kernels (default) or the reference layers a student reads")
    return parser


def add_backend_arguments(parser):
    """``--backend`` and ``--kernels``: the arguments of :func:`manualbp.get_backend` that every
    script takes."""
    parser.add_argument("--backend", choices=list(BACKENDS), default="numpy")
    return add_kernels_argument(parser)


def add_arguments(parser, variants, activations=None, preset="mnist", datasets=("mnist", "fashion-mnist")):
    """The flags every example shares; defaults from the Table 1 ``preset``."""
    p = PRESETS[preset]
    add_backend_arguments(parser)
    parser.add_argument("--dataset", choices=list(datasets), default=datasets[0])
    parser.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    parser.add_argument("--variant", choices=list(variants) + ["all"], default="all")
    if activations:
        parser.add_argument("--activation", choices=list(activations) + ["both"], default="both")
    parser.add_argument("--epochs", type=int, default=p["epochs"])
    parser.add_argument("--batch-size", type=int, default=p["batch_size"])
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default=p["optimizer"])
    parser.add_argument("--lr", type=float, default=p["lr"])
    parser.add_argument("--weight-decay", type=float, default=p["weight_decay"])
    parser.add_argument("--momentum", type=float, default=p.get("momentum", 0.9), help="SGD only")
    parser.add_argument("--decay-every", type=int, default=p.get("decay_every"),
                        help="multiply the learning rate by --decay-gamma every this many epochs")
    parser.add_argument("--decay-gamma", type=float, default=p.get("decay_gamma", 1.0))
    parser.add_argument("--sigma-lr", type=float, default=1e-3, help="learning rate of Eq. (7)")
    parser.add_argument("--sigma-update", choices=["eq7", "weights"], default="eq7",
                        help="eq7: the paper's separate Adam + abs; weights: the released code's way")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--out", default="runs/" + preset)
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints in OUT")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    return parser


def run(args, build, variants, activations=(None,), augment=None):
    """Train and evaluate every requested variant (x activation); write ``OUT/metrics.json``.
    ``augment``: optional ``f(x_batch, backend)`` applied to training batches."""
    bk = get_backend(args.backend, args.dtype, args.seed, args.kernels)
    splits = load_splits(bk, args.dataset, args.data_dir, args.seed)
    limit = getattr(args, "limit_eval", None)
    if limit:                                   # quick runs: a random subset of val and test
        splits = {k: (v if k == "train" else (v[0][:limit], v[1][:limit])) for k, v in splits.items()}
    chosen = list(variants) if args.variant == "all" else [args.variant]
    if activations != (None,):
        activations = list(activations) if args.activation == "both" else [args.activation]
    os.makedirs(args.out, exist_ok=True)
    results = []
    for variant in chosen:
        for activation in activations:
            print(f"== {variant}" + (f" ({activation})" if activation else ""))
            results.append(run_variant(bk, build, variant, activation, splits, args,
                                       os.path.join(args.out, "checkpoints"), augment=augment))
    metrics = {"dataset": args.dataset, "backend": args.backend, "dtype": args.dtype,
               "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
               "split_sizes": {k: int(len(v[1])) for k, v in splits.items()},
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": results}
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    from .plots import training_figures        # matplotlib is loaded only when figures are drawn
    training_figures(results, args.out)         # OUT/training_curves.png, OUT/sigma_evolution.png
    print(format_table(results))
    return metrics


def format_table(results):
    """A Markdown table: test accuracy (evaluated as the paper does, and with noise on / off),
    seconds per epoch and the mean learned ``sigma``."""
    lines = ["| model | act. | test acc. (paper's eval) | noise on | noise off | s/epoch | mean sigma |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        sigmas = [s["mean"] for s in r["sigma"].values()]
        mean_sigma = f"{sum(sigmas) / len(sigmas):.3f}" if sigmas else "-"
        lines.append(f"| {r['variant']} | {r['activation'] or '-'} | {r['test_accuracy']:.4f} | "
                     f"{r['test_accuracy_noise_on']:.4f} | {r['test_accuracy_noise_off']:.4f} | "
                     f"{r['seconds_per_epoch']:.2f} | {mean_sigma} |")
    return "\n".join(lines)


def parser(description, variants, activations=None, preset="mnist"):
    """An ``argparse`` parser with :func:`add_arguments` applied."""
    return add_arguments(argparse.ArgumentParser(description=description), variants, activations, preset)


def run_resnet(argv, description, builder, variants, dataset):
    """The whole ResNet example script: the shared flags plus quick-run ones (``--limit-batches``,
    ``--limit-eval``, ``--eval-batch-size``, ``--width``, ``--no-augment``), then :func:`run` of
    ``builder(bk, variant, dataset, width=...)`` over ``variants`` with random crops and flips."""
    parser = add_arguments(argparse.ArgumentParser(description=description), variants,
                           preset=dataset, datasets=(dataset,))
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="train on only this many batches per epoch (quick CPU runs)")
    parser.add_argument("--limit-eval", type=int, default=None,
                        help="evaluate on only this many validation and test images (quick CPU runs)")
    parser.add_argument("--eval-batch-size", type=int, default=250)
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    args = parser.parse_args(argv)

    def build(bk, variant, activation=None):
        return builder(bk, variant, dataset, width=args.width)

    return run(args, build, variants, augment=random_crop_flip if args.augment else None)
