"""The shared runner behind the example scripts: data, Table 1 set-ups, training every variant,
evaluation with noise on and off, ``metrics.json`` and a printed table.

An example script only names its models (a ``build(bk, variant, activation)`` function, the
variant names) and its data; everything else is here so every experiment reports alike.
"""
import argparse
import json
import math
import os
import sys
import time
from functools import partial

from . import checkpoint
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


def table1(dataset):
    """The Table 1 training set-up of ``dataset`` (Fashion-MNIST takes MNIST's)."""
    return dict(PRESETS["mnist" if dataset == "fashion-mnist" else dataset])


def make_optimizers(model, optimizer="adam", lr=1e-3, weight_decay=1e-4, momentum=None,
                    decay_every=None, decay_gamma=1.0, sigma_lr=1e-3, sigma_update="eq7", **_):
    """The weights' optimiser (Table 1) and, for learned noise, the noise-level optimiser.

    ``sigma_update="eq7"`` (the paper): ``sigma`` gets its own Adam followed by ``abs`` (Eq. 7).
    ``"weights"`` (the paper's released code): ``sigma`` is trained by the weights' optimiser, with
    its weight decay, and used as ``|sigma|`` in the forward pass. ``momentum`` (SGD only)
    defaults to 0.9.
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
        weights = SGD(model, lr, momentum=0.9 if momentum is None else momentum,
                      weight_decay=weight_decay, select=select)
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


#: ``--help`` shows every flag's default.
HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter

#: The flags that define a training run, recorded in its checkpoints (``--resume`` with another
#: value is refused); ``--epochs`` is not among them: a finished run may be trained further.
RUN_SETTINGS = ("dataset", "optimizer", "lr", "weight_decay", "momentum", "decay_every", "decay_gamma",
                "sigma_lr", "sigma_update", "width", "augment", "limit_train")


def run_variant(bk, build, variant, activation, splits, args, checkpoint_dir=None, log=print,
                augment=None):
    """Train one model variant and evaluate it; returns its entry of ``metrics.json``."""
    bk.seed([args.seed, 0xC0DE])
    model = build(bk, variant, activation)
    optimizers, schedule = make_optimizers(model, **vars(args))
    settings = {"variant": variant, "activation": activation,
                **{k: getattr(args, k) for k in RUN_SETTINGS if hasattr(args, k)}}
    trainer = Trainer(model, optimizers, schedule, batch_size=args.batch_size, seed=args.seed,
                      augment=augment, limit_batches=getattr(args, "limit_batches", None),
                      eval_batch_size=getattr(args, "eval_batch_size", 1000), progress=args.progress,
                      settings=settings)
    path = None
    if checkpoint_dir:
        path = os.path.join(checkpoint_dir, checkpoint_name(variant, activation))
    history = trainer.fit(splits, args.epochs, checkpoint_path=path, resume=args.resume, log=log)
    bk.seed([args.seed, 0xE7A1])             # the final evaluations draw the same noise, resumed or not
    x, y = splits["test"]
    on = trainer.evaluate(x, y, noise=True)[1]
    off = trainer.evaluate(x, y, noise=False)[1]
    default = trainer.evaluate(x, y)[1]
    eval_noise = {name: layer.eval_noise for name, layer in noise_layers(model).items()}
    noise_modes = {name: layer.mode for name, layer in noise_layers(model).items()}
    return {"variant": variant, "activation": activation,
            "test_accuracy": default, "test_accuracy_noise_on": on, "test_accuracy_noise_off": off,
            "eval_noise_default": any(eval_noise.values()), "noise_modes": noise_modes,
            "seconds_per_epoch": sum(h["seconds"] for h in history) / max(1, len(history)),
            "history": history, "sigma": sigma_summary(model), "checkpoint": path}


def add_kernels_argument(parser):
    """``--kernels {fast,reference}`` (the ``kernels`` of :func:`manualbp.get_backend`)."""
    parser.add_argument("--kernels", choices=list(KERNELS), default="fast",
                        help="the fast kernels, or the reference layers a student reads")
    return parser


def add_backend_arguments(parser):
    """``--backend`` and ``--kernels``: the arguments of :func:`manualbp.get_backend` that every
    script takes."""
    parser.add_argument("--backend", choices=list(BACKENDS), default="numpy",
                        help="array module: NumPy on the CPU, CuPy on an NVIDIA GPU")
    return add_kernels_argument(parser)


def add_arguments(parser, variants, activations=None, preset="mnist", datasets=("mnist", "fashion-mnist"),
                  out=None):
    """The flags every example shares; defaults from the Table 1 ``preset``; ``out``: the
    script's own default output folder."""
    p = PRESETS[preset]
    add_backend_arguments(parser)
    parser.add_argument("--dataset", choices=list(datasets), default=datasets[0],
                        help="downloaded with checksums into the cache, or read from --data-dir")
    parser.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    parser.add_argument("--variant", choices=list(variants) + ["all"], default="all",
                        help="the model variant to train, or all of them")
    if activations:
        parser.add_argument("--activation", choices=list(activations) + ["both"], default="both",
                            help="the hidden layers' activation, or both")
    parser.add_argument("--epochs", type=int, default=p["epochs"], help="training epochs (Table 1)")
    parser.add_argument("--batch-size", type=int, default=p["batch_size"], help="mini-batch size")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default=p["optimizer"],
                        help="the weights' optimiser (Table 1)")
    parser.add_argument("--lr", type=float, default=p["lr"], help="the weights' learning rate")
    parser.add_argument("--weight-decay", type=float, default=p["weight_decay"], help="L2 weight decay of the weights")
    parser.add_argument("--momentum", type=float, default=p.get("momentum"), help="SGD's momentum (none given: 0.9); refused with Adam")
    parser.add_argument("--decay-every", type=int, default=p.get("decay_every"),
                        help="multiply the learning rate by --decay-gamma every this many epochs")
    parser.add_argument("--decay-gamma", type=float, default=p.get("decay_gamma", 1.0))
    parser.add_argument("--sigma-lr", type=float, default=1e-3, help="learning rate of Eq. (7)")
    parser.add_argument("--sigma-update", choices=["eq7", "weights"], default="eq7",
                        help="eq7: the paper's separate Adam + abs; weights: the released code's way")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights, shuffling and noise")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                        help="working precision")
    parser.add_argument("--out", default=out or "runs/" + preset,
                        help="folder of metrics.json, the figures and checkpoints/")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints in OUT")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again a variant whose finished results are already in OUT")
    return add_quick_run_arguments(parser)


def add_quick_run_arguments(parser, evaluation="validation and test images"):
    """The quick-run flags every script shares (``--limit-batches``, ``--limit-train``,
    ``--limit-eval``), ``--no-progress`` and ``--debug``; ``evaluation`` names what
    ``--limit-eval`` limits."""
    parser.add_argument("--limit-batches", type=int, default=None,
                        help="train on only this many batches per epoch (quick runs)")
    parser.add_argument("--limit-train", type=int, default=None,
                        help="train on only the first this many training images (quick runs)")
    parser.add_argument("--limit-eval", type=int, default=None,
                        help=f"evaluate on only this many {evaluation} (quick runs)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars (they are off when output is not a terminal)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


class SettingError(ValueError):
    """A flag has a value the run cannot use: refused before any work."""


def require(args, ok, flag, expected):
    """Refuse ``--flag`` unless ``ok``: a :class:`SettingError` naming the flag, its value and
    what is ``expected``."""
    if not ok:
        raise SettingError(f"--{flag.replace('_', '-')} {getattr(args, flag)!r}: expected {expected}")


def finite(value):
    """Whether ``value`` is a finite int or float."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def check_at_least_one(args, *flags):
    """Each of ``flags`` that is set (not ``None``) is at least 1."""
    for flag in flags:
        if getattr(args, flag, None) is not None:
            require(args, getattr(args, flag) >= 1, flag, "at least 1")


def check_out(args):
    """``--out`` exists or can be made, and a file can be written there."""
    try:
        os.makedirs(args.out, exist_ok=True)
        checkpoint.write_atomically(os.path.join(args.out, ".write-test"), lambda f: f.write(b""))
        os.remove(os.path.join(args.out, ".write-test"))
    except OSError as err:
        raise SettingError(f"--out {args.out!r}: cannot write there ({err.strerror or err})") from None


def check_arguments(args):
    """Refuse bad training flags before any work, with one line naming the flag, its value and
    what is expected; check that ``--out`` can be written."""
    require(args, args.seed >= 0, "seed", "a non-negative integer")
    for flag in ("lr", "sigma_lr"):
        require(args, finite(getattr(args, flag)) and getattr(args, flag) > 0, flag, "a positive finite number")
    require(args, finite(args.weight_decay) and args.weight_decay >= 0, "weight_decay",
            "a non-negative finite number")
    require(args, finite(args.decay_gamma) and 0 < args.decay_gamma <= 1, "decay_gamma", "a number in (0, 1]")
    require(args, args.momentum is None or args.optimizer == "sgd", "momentum", "no value with --optimizer adam")
    require(args, args.momentum is None or (finite(args.momentum) and 0 <= args.momentum < 1), "momentum",
            "a number in [0, 1)")
    check_at_least_one(args, "epochs", "batch_size", "decay_every", "limit_batches", "limit_train", "limit_eval",
                       "width", "eval_batch_size")
    check_out(args)


def cli(main):
    """Run a script's ``main()``: a user's mistake (a bad flag, missing or damaged data or
    checkpoint) prints one line and exits with status 2; ``--debug`` shows the traceback."""
    from .data import DataError
    try:
        main()
    except (SettingError, DataError, checkpoint.CheckpointError, FloatingPointError) as err:
        if "--debug" in sys.argv:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def run(args, build, variants, activations=(None,), augment=None):
    """Train and evaluate every requested variant (x activation). After each, its results are
    merged into ``OUT/metrics.json`` (written atomically; other variants' results are kept) and
    the figures are redrawn with all of them. A variant whose finished results are already there
    is refused unless ``--resume`` (continue from its checkpoint) or ``--overwrite``.
    ``augment``: optional ``f(x_batch, backend)`` applied to training batches."""
    check_arguments(args)
    start = time.perf_counter()
    chosen = list(variants) if args.variant == "all" else [args.variant]
    if activations != (None,):
        activations = list(activations) if args.activation == "both" else [args.activation]
    metrics_path = os.path.join(args.out, "metrics.json")
    done = {(r["variant"], r["activation"]) for r in read_metrics(metrics_path, args.overwrite)["results"]}
    for key in ((v, a) for v in chosen for a in activations):
        if key in done and not (args.resume or args.overwrite):
            raise SettingError(f"{metrics_path} already holds the finished results of "
                               f"{' '.join(k for k in key if k)}: pass --resume to keep them (and "
                               "continue from the checkpoint) or --overwrite to train again")
    checkpoint_dir = os.path.join(args.out, "checkpoints")
    checkpoint.remove_temporary_files(checkpoint_dir)
    checkpoint.remove_temporary_files(args.out)
    bk = get_backend(args.backend, args.dtype, args.seed, args.kernels)
    splits = load_splits(bk, args.dataset, args.data_dir, args.seed)
    if args.limit_train:                        # quick runs: the first images of the training split
        splits["train"] = tuple(a[:args.limit_train] for a in splits["train"])
    if args.limit_eval:                         # and of the (shuffled) validation and test splits
        splits = {k: (v if k == "train" else (v[0][:args.limit_eval], v[1][:args.limit_eval]))
                  for k, v in splits.items()}
    results = []
    for variant in chosen:
        for activation in activations:
            print(f"== {variant}" + (f" ({activation})" if activation else ""))
            results.append(run_variant(bk, build, variant, activation, splits, args, checkpoint_dir,
                                       augment=augment))
            metrics = write_metrics(metrics_path, args, splits, results[-1])
            from .plots import training_figures     # matplotlib is loaded only when figures are drawn
            training_figures(metrics["results"], args.out, args.dataset)   # training_curves.png, sigma_evolution.png
    print(format_table(results))
    print(f"total run time {time.perf_counter() - start:.1f} s; results in {metrics_path}")
    return metrics


def read_metrics(path, ignore_damaged=False):
    """The ``metrics.json`` at ``path`` (``{"results": []}`` when there is none); a damaged one is
    refused unless ``ignore_damaged``."""
    if not os.path.exists(path):
        return {"results": []}
    try:
        with open(path) as f:
            metrics = json.load(f)
        if not isinstance(metrics.get("results"), list):
            raise ValueError("no list of results")
        return metrics
    except ValueError as err:
        if ignore_damaged:
            return {"results": []}
        raise SettingError(f"{path} is not a metrics file of manualbp ({err}): move it away or pass "
                           "--overwrite") from None


def write_metrics(path, args, splits, result):
    """Merge ``result`` into the ``metrics.json`` at ``path`` (replacing that variant's earlier
    entry) and write it atomically; returns the merged metrics."""
    kept = [r for r in read_metrics(path, args.overwrite)["results"]
            if (r["variant"], r["activation"]) != (result["variant"], result["activation"])]
    metrics = {"dataset": args.dataset, "backend": args.backend, "kernels": args.kernels,
               "dtype": args.dtype, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
               "split_sizes": {k: int(len(v[1])) for k, v in splits.items()},
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": kept + [result]}
    checkpoint.write_json(path, metrics)
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


def parser(description, variants, activations=None, preset="mnist", out=None):
    """An ``argparse`` parser with :func:`add_arguments` applied."""
    return add_arguments(argparse.ArgumentParser(description=description, formatter_class=HELP_FORMAT),
                         variants, activations, preset, out=out)


def run_resnet(argv, description, builder, variants, dataset):
    """The whole ResNet example script: the shared flags plus ``--eval-batch-size``, ``--width``
    and ``--no-augment``, then :func:`run` of
    ``builder(bk, variant, dataset, width=...)`` over ``variants`` with random crops and flips."""
    parser = add_arguments(argparse.ArgumentParser(description=description, formatter_class=HELP_FORMAT),
                           variants, preset=dataset, datasets=(dataset,), out=f"runs/{dataset}-{variants[0]}")
    parser.add_argument("--eval-batch-size", type=int, default=250, help="images per evaluation pass")
    parser.add_argument("--width", type=int, default=64, help="channels of the first stage")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    args = parser.parse_args(argv)

    def build(bk, variant, activation=None):
        return builder(bk, variant, dataset, width=args.width)

    return run(args, build, variants, augment=random_crop_flip if args.augment else None)
