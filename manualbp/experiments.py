"""The shared runner behind the training scripts: the command line, training every variant of a
model family (:data:`manualbp.zoo.FAMILIES`) on a dataset (:data:`manualbp.datasets.DATASETS`),
evaluation with noise on and off, ``metrics.json`` and a printed table.

An example script only names its family (``experiments.main("mlp", ...)``); everything else is
here and in the two registries, so every experiment reports alike.
"""
import argparse
import json
import math
import os
import sys
import time

from . import checkpoint, datasets, distributed, trainer_state
from .attacks import eot
from .backend import BACKENDS, DTYPES, KERNELS, BackendError, get_backend
from .data import random_crop_flip
from .data.augment import input_noise
from .evaluate import ATTACK_BATCH, DRAWS
from .model import noise_layers, sigma_summary
from .optim import SIGMA_LR
from .parallel import ThreadCountError, num_threads
from .train import OPTIMIZER_SETTINGS, SIGMA_UPDATES, load_model, train_model
from .zoo import FAMILIES, get_family, model_name

#: Seeds the final test evaluations: ``bk.seed([seed, FINAL_EVAL_STREAM])``, so a finished run and
#: the same run resumed draw the same noise.
FINAL_EVAL_STREAM = 0xE7A1


#: ``--help`` shows every flag's default.
HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter

#: The flags of a training set-up (Table 1 and the noise-level update), as ``train_model`` takes it.
TRAINING = (*OPTIMIZER_SETTINGS, "epochs", "batch_size")
#: The remedies for collapsing noise (:mod:`manualbp.remedies`): ``train_model``'s keys, and the
#: flags of their arguments.
REMEDIES = {"adversarial": {"budget": "adv_budget", "alpha": "adv_alpha", "steps": "adv_steps", "mix": "adv_mix"},
            "sigma_penalty": {"strength": "sigma_penalty", "target": "sigma_target"}}
#: The flags that define a training run, recorded in its checkpoints (``--resume`` with another
#: value is refused): the set-up but ``--epochs`` (a finished run may be trained further) and the
#: batch size (the trainer records it), the data, its augmentation and the family's options.
RUN_SETTINGS = ("dataset", *TRAINING[:-2], "width", "augment", "input_noise", "limit_train")


def training_setup(args):
    """The training set-up of ``args``: the keys of :data:`TRAINING` with this run's values,
    and each remedy of :data:`REMEDIES` asked for (``--adversarial pgd``: PGD with the
    dataset's Table 2 settings where no ``--adv-*`` flag is given; ``--sigma-penalty``)."""
    setup = {key: getattr(args, key) for key in TRAINING}
    if getattr(args, "adversarial", "none") == "pgd":
        pgd = datasets.get_dataset(args.dataset).attacks["pgd"]
        given = {key: getattr(args, flag) for key, flag in REMEDIES["adversarial"].items()}
        setup["adversarial"] = {key: pgd[key] if value is None else value for key, value in given.items()}
    if getattr(args, "sigma_penalty", None) is not None:
        setup["sigma_penalty"] = {key: getattr(args, flag) for key, flag in REMEDIES["sigma_penalty"].items()}
    return setup


def training_augment(args):
    """The training batches' augmentation ``augment(x, bk) -> x`` of ``args``, or ``None``: the
    dataset's random crops and flips (unless ``--no-augment``), then ``x + S * eps`` with
    ``--input-noise S`` > 0 (Gaussian data augmentation, as Cohen et al. train for input smoothing)."""
    augment = random_crop_flip if getattr(args, "augment", False) else None
    scale = getattr(args, "input_noise", 0.0)
    return input_noise(scale, augment) if scale > 0 else augment


def variant_builder(family, variant, activation, args):
    """``build(bk, **options)`` of a variant (x activation) of ``family`` for ``args.dataset``,
    with the family's own options of ``args``."""
    options = {name: getattr(args, name) for name, _ in family.options}
    return lambda b, **more: family.model(b, variant, activation, args.dataset, **options, **more)


def train_variant(bk, family, variant, activation, splits, args, checkpoint_dir=None, log=print, comm=None):
    """Train one model variant as the training scripts do; returns ``(model, trainer)``. Its
    checkpoint (``checkpoint_dir/<name>.npz``) records the run's settings (:data:`RUN_SETTINGS`)."""
    settings = {"variant": variant, "activation": activation,
                **{k: getattr(args, k) for k in RUN_SETTINGS if hasattr(args, k)}}
    path = variant_checkpoint(checkpoint_dir, variant, activation) if checkpoint_dir else None
    return train_model(
        bk, variant_builder(family, variant, activation, args), splits, training_setup(args), args.seed,
        checkpoint_path=path, resume=args.resume, log=log, augment=training_augment(args),
        limit_batches=args.limit_batches, eval_batch_size=args.eval_batch_size, progress=args.progress,
        settings=settings, comm=comm)


def run_variant(bk, family, variant, activation, splits, args, checkpoint_dir=None, log=print, comm=None):
    """Train one model variant and evaluate it; returns its entry of ``metrics.json``. With
    ``comm`` (a :class:`~manualbp.distributed.Communicator`) it trains and evaluates data-parallel."""
    path = variant_checkpoint(checkpoint_dir, variant, activation) if checkpoint_dir else None
    model, trainer = train_variant(bk, family, variant, activation, splits, args, checkpoint_dir, log, comm)
    history = trainer.history
    bk.seed([args.seed, FINAL_EVAL_STREAM])
    if comm is not None:
        comm.own_stream(bk, [args.seed, FINAL_EVAL_STREAM])
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
            "history": history, "sigma": sigma_summary(model), "checkpoint": path, "training": trainer.settings}


def variant_checkpoint(checkpoint_dir, variant, activation):
    """The checkpoint of a variant (x activation) in the folder ``checkpoint_dir``."""
    return os.path.join(checkpoint_dir, model_name(variant, activation) + ".npz")


def load_or_train(bk, build, name, splits, training, seed, source=None, out=None, log=print, **trainer_options):
    """The model ``name`` (its checkpoint is ``<name>.npz``) and how it was obtained: loaded from
    the folder ``source`` when the checkpoint is there, else trained by
    :func:`manualbp.train.train_model` with the set-up ``training`` (its checkpoint then written
    to the folder ``out`` when given)."""
    file = f"{name}.npz"
    if source and os.path.exists(os.path.join(source, file)):
        log(f"== {name}: loading {os.path.join(source, file)}")
        return load_model(bk, build, os.path.join(source, file)), "checkpoint"
    log(f"== {name}: training {training['epochs']} epochs (seed {seed})")
    model, _ = train_model(bk, build, splits, training, seed, log=None,
                           checkpoint_path=os.path.join(out, file) if out else None, **trainer_options)
    return model, f"{training['epochs']} epochs"


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


def number(text):
    """``float(text)``, or ``text`` itself when it is not a number: the flag's check then refuses
    it in one line (:func:`require`) instead of argparse's usage message."""
    try:
        return float(text)
    except ValueError:
        return text


def add_arguments(parser, family, out, distributed=True):
    """The flags of a training script for ``family`` (a :class:`manualbp.zoo.Family`): data,
    variants, the Table 1 set-up of its first dataset as defaults, the family's own options,
    quick-run flags; ``out``: the script's own default output folder; ``distributed``: whether
    it takes ``--distributed``."""
    data = datasets.get_dataset(family.datasets[0])
    p = data.training
    add_backend_arguments(parser)
    parser.add_argument("--dataset", choices=list(family.datasets), default=family.datasets[0],
                        help="downloaded with checksums into the cache, or read from --data-dir")
    parser.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    parser.add_argument("--variant", choices=list(family.variants) + ["all"], default="all",
                        help="the model variant to train, or all of them")
    if family.activations != (None,):
        parser.add_argument("--activation", choices=list(family.activations) + ["both"], default="both",
                            help="the hidden layers' activation, or both")
    parser.add_argument("--epochs", type=int, default=p["epochs"], help="training epochs (Table 1)")
    parser.add_argument("--batch-size", type=int, default=p["batch_size"], help="mini-batch size")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default=p["optimizer"],
                        help="the weights' optimiser (Table 1)")
    parser.add_argument("--lr", type=float, default=p["lr"], help="the weights' learning rate")
    parser.add_argument("--weight-decay", type=float, default=p["weight_decay"], help="L2 weight decay of the weights")
    parser.add_argument("--momentum", type=float, default=p.get("momentum"),
                        help="SGD's momentum (none given: 0.9); refused with Adam")
    parser.add_argument("--decay-every", type=int, default=p.get("decay_every"),
                        help="multiply the learning rate by --decay-gamma every this many epochs")
    parser.add_argument("--decay-gamma", type=float, default=p.get("decay_gamma", 1.0))
    parser.add_argument("--sigma-lr", type=float, default=SIGMA_LR, help="learning rate of Eq. (7)")
    parser.add_argument("--sigma-update", choices=list(SIGMA_UPDATES), default="eq7",
                        help="eq7: the paper's separate Adam + abs; weights: the released code's way "
                             "(sigma in the weights' optimiser, |sigma| in the forward pass); released: "
                             "that code exactly as it runs (sigma from N(0, 1), no sign(sigma) in its gradient)")
    add_remedy_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, the initial weights, shuffling and noise")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="working precision")
    parser.add_argument("--eval-batch-size", type=int, default=family.eval_batch_size,
                        help="images per evaluation pass")
    for name, (kind, default, text) in family.options:
        parser.add_argument(f"--{name}", type=kind, default=default, help=text)
    if data.augment:
        parser.add_argument("--no-augment", dest="augment", action="store_false",
                            help="no random crops (4-pixel padding) and horizontal flips in training")
    parser.add_argument("--input-noise", type=number, default=0.0, metavar="S",
                        help="train on x + S * eps, eps ~ N(0, 1) per pixel (Gaussian data augmentation for "
                             "input smoothing, examples/certify.py); 0: off")
    parser.add_argument("--out", default=out, help="folder of metrics.json, the figures and checkpoints/")
    parser.add_argument("--resume", action="store_true", help="continue from checkpoints in OUT")
    parser.add_argument("--overwrite", action="store_true",
                        help="train again a variant whose finished results are already in OUT")
    if distributed:
        parser.add_argument("--distributed", action="store_true",
                            help="data-parallel over the ranks of mpiexec -n K (docs/distributed.md)")
    return add_quick_run_arguments(parser)
def add_remedy_arguments(parser):
    """The flags of the remedies for collapsing noise (:data:`REMEDIES`)."""
    parser.add_argument("--adversarial", choices=["none", "pgd"], default="none",
                        help="train on PGD examples (Madry et al.), crafted by the engine's own backward")
    parser.add_argument("--adv-budget", type=float, default=None,
                        help="adversarial training's L-inf budget (pixels; default: the dataset's Table 2 PGD)")
    parser.add_argument("--adv-alpha", type=float, default=None, help="its PGD step size (default: Table 2)")
    parser.add_argument("--adv-steps", type=int, default=None, help="its PGD steps (default: Table 2)")
    parser.add_argument("--adv-mix", type=float, default=1.0,
                        help="weight of the adversarial loss; below 1 the clean loss gets the rest")
    parser.add_argument("--sigma-penalty", type=float, default=None,
                        help="strength of the prior (s/2) sum (log sigma - log target)^2 on learned sigma")
    parser.add_argument("--sigma-target", type=float, default=1.0, help="the noise level the prior pulls towards")
    return parser


def add_study_arguments(parser, seeds, out, spread):
    """The flags of the scripts that train and attack a whole family (the robustness table, the
    noise study): ``--dataset``, ``--family``, ``--seed N [N ...]`` (default ``seeds``),
    ``--draws``, ``--eot-draws``, ``--attack-batch``, the backend, ``--data-dir``, ``--out``
    (default ``out``), ``--distributed`` (``spread``: what it deals out to the ranks) and the
    quick-run flags."""
    parser.add_argument("--dataset", choices=list(datasets.DATASETS), default="fashion-mnist")
    parser.add_argument("--family", choices=list(FAMILIES), default="mlp")
    parser.add_argument("--seed", type=int, nargs="+", default=list(seeds),
                        help="one or more seeds of the split, training and attacks (several: mean and spread)")
    parser.add_argument("--draws", type=int, default=DRAWS,
                        help="noise draws per accuracy of a randomised model (worst-of-K: K)")
    parser.add_argument("--eot-draws", type=int, default=eot.DRAWS, help="noise draws per EOT-PGD step")
    parser.add_argument("--attack-batch", type=int, default=ATTACK_BATCH, help="images per attack call")
    add_backend_arguments(parser)
    parser.add_argument("--data-dir", default=None, help="directory holding the dataset's files")
    parser.add_argument("--out", default=out, help="folder of the tables, figures and checkpoints")
    parser.add_argument("--distributed", action="store_true", help=f"deal {spread} out to the ranks of mpiexec -n K")
    return add_quick_run_arguments(parser, evaluation="test images")


def study_setup(args):
    """``(communicator or None, backend)`` of a study script: MPI when ``--distributed``, and
    the float32 backend (on rank ``r``'s GPU with CuPy)."""
    comm = distributed.connect() if args.distributed else None
    return comm, get_backend(args.backend, "float32", args.seed[0], args.kernels,
                             device=None if comm is None else comm.rank)


def check_study(args, *counts):
    """Refuse bad flags of :func:`add_study_arguments` (and the ``counts``, each at least 1)
    before any work; returns the family (on its dataset)."""
    check_at_least_one(args, "draws", "eot_draws", "attack_batch", "limit_batches", "limit_train", "limit_eval",
                       *counts)
    require(args, min(args.seed) >= 0 and len(set(args.seed)) == len(args.seed), "seed",
            "distinct non-negative integers")
    try:
        family = get_family(args.family, args.dataset)
    except ValueError as err:
        raise SettingError(f"--family {args.family!r}: {err}") from None
    check_distributed(args)
    return family


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


def check_remedies(args):
    """The remedies' flags: given only with their remedy, and in range."""
    for flag in ("adv_budget", "adv_alpha", "adv_steps"):
        require(args, getattr(args, flag) is None or args.adversarial == "pgd", flag, "no value without --adversarial pgd")
    for flag in ("adv_budget", "adv_alpha"):
        require(args, getattr(args, flag) is None or (finite(getattr(args, flag)) and getattr(args, flag) > 0),
                flag, "a positive finite number (pixel units)")
    require(args, finite(args.adv_mix) and 0 < args.adv_mix <= 1, "adv_mix", "a number in (0, 1]")
    require(args, args.sigma_penalty is None or (finite(args.sigma_penalty) and args.sigma_penalty > 0),
            "sigma_penalty", "a positive finite number")
    require(args, finite(args.sigma_target) and args.sigma_target > 0, "sigma_target", "a positive finite number")


def check_distributed(args):
    """Under ``mpiexec`` with several ranks, the script was given ``--distributed`` (a script
    without that flag runs in one process): else every rank would run the whole job alone and
    write the same files."""
    ranks = distributed.launched()
    if ranks > 1 and not getattr(args, "distributed", False):
        remedy = "pass --distributed" if hasattr(args, "distributed") else "this script runs in one process"
        raise SettingError(f"started by mpiexec on {ranks} ranks without --distributed: {remedy}")


def check_out(args):
    """``--out`` exists or can be made, and a file can be written there."""
    probe = os.path.join(args.out, f".write-test-{os.getpid()}")     # one per process (MPI ranks)
    try:
        os.makedirs(args.out, exist_ok=True)
        checkpoint.write_atomically(probe, lambda f: f.write(b""))
        os.remove(probe)
    except OSError as err:
        raise SettingError(f"--out {args.out!r}: cannot write there ({err.strerror or err})") from None


def check_resumable(args, checkpoint_dir, keys):
    """``--resume`` continues no checkpoint of the variants ``keys`` that already holds more
    epochs than ``--epochs`` (``metrics.json`` would record ``--epochs`` beside the longer run's
    history); checked before any work."""
    for variant, activation in keys:
        path = variant_checkpoint(checkpoint_dir, variant, activation)
        if os.path.exists(path):
            trainer_state.check_epochs(path, checkpoint.load_meta(path).get("epochs_done", 0), args.epochs)


def check_arguments(args):
    """Refuse bad training flags before any work, with one line naming the flag, its value and
    what is expected (``--out`` is checked by :func:`check_out`, once the backend is made)."""
    require(args, args.seed >= 0, "seed", "a non-negative integer")
    for flag in ("lr", "sigma_lr"):
        require(args, finite(getattr(args, flag)) and getattr(args, flag) > 0, flag, "a positive finite number")
    require(args, finite(args.weight_decay) and args.weight_decay >= 0, "weight_decay",
            "a non-negative finite number")
    require(args, finite(args.decay_gamma) and 0 < args.decay_gamma <= 1, "decay_gamma", "a number in (0, 1]")
    require(args, finite(args.input_noise) and args.input_noise >= 0, "input_noise",
            "a non-negative finite number (pixel units; 0: off)")
    require(args, args.momentum is None or args.optimizer == "sgd", "momentum", "no value with --optimizer adam")
    require(args, args.momentum is None or (finite(args.momentum) and 0 <= args.momentum < 1), "momentum",
            "a number in [0, 1)")
    check_at_least_one(args, "epochs", "batch_size", "decay_every", "limit_batches", "limit_train", "limit_eval",
                       "width", "eval_batch_size", "adv_steps")
    check_remedies(args)
    check_distributed(args)


def cli(main):
    """Run a script's ``main()``: a user's mistake (a bad flag or ``MANUALBP_NUM_THREADS``, a
    backend this machine lacks, missing or damaged data or checkpoint) prints one line and exits
    with status 2; ``--debug`` shows the traceback."""
    from .data import DataError
    try:
        num_threads()                  # read at the threads' first use: refused here, before any work
        main()
    except (SettingError, ThreadCountError, BackendError, DataError, checkpoint.CheckpointError,
            FloatingPointError, distributed.DistributedError) as err:
        if "--debug" in sys.argv:
            raise
        comm = distributed.active()
        if comm is None and distributed.launched("rank") > 0:
            sys.exit(2)         # before MPI starts, every rank refuses the same flags: rank 0 says why
        rank = f" (rank {comm.rank} of {comm.size})" if comm is not None and comm.size > 1 else ""
        print(f"error{rank}: {err}", file=sys.stderr)
        distributed.abort(2)                 # the other ranks may be waiting for this one
        sys.exit(2)


def run(args, family):
    """Train and evaluate every requested variant (x activation) of ``family``. After each, its
    results are merged into ``OUT/metrics.json`` (written atomically; other variants' results are
    kept) and the figures are redrawn with all of them. A variant whose finished results are
    already there is refused unless ``--resume`` (continue from its checkpoint) or ``--overwrite``.
    With ``--distributed`` every rank of the MPI job runs this; rank 0 alone prints and writes."""
    check_arguments(args)
    comm = distributed.connect() if args.distributed else None
    # the backend before --out is made: a machine without the GPU asked for is refused with nothing written
    bk = get_backend(args.backend, args.dtype, args.seed, args.kernels, device=None if comm is None else comm.rank)
    check_out(args)
    root = comm is None or comm.is_root
    say = print if root else (lambda *_, **__: None)
    start = time.perf_counter()
    chosen = list(family.variants) if args.variant == "all" else [args.variant]
    activations = family.activations
    if activations != (None,) and args.activation != "both":
        activations = [args.activation]
    metrics_path = os.path.join(args.out, "metrics.json")
    done = {(r["variant"], r["activation"]) for r in read_metrics(metrics_path, args.overwrite)["results"]}
    keys = [(v, a) for v in chosen for a in activations]
    for key in keys:
        if key in done and not (args.resume or args.overwrite):
            raise SettingError(f"{metrics_path} already holds the finished results of "
                               f"{' '.join(k for k in key if k)}: pass --resume to keep them (and "
                               "continue from the checkpoint) or --overwrite to train again")
    checkpoint_dir = os.path.join(args.out, "checkpoints")
    if args.resume:
        check_resumable(args, checkpoint_dir, keys)
    if comm is not None:
        comm.barrier()             # every rank's --out probe is done before rank 0 clears temporary files
    if root:
        checkpoint.remove_temporary_files(checkpoint_dir)
        checkpoint.remove_temporary_files(args.out)
    splits = datasets.load_splits(bk, args.dataset, args.data_dir, args.seed, args.limit_train, args.limit_eval)
    results = []
    for variant in chosen:
        for activation in activations:
            say(f"== {variant}" + (f" ({activation})" if activation else ""))
            results.append(run_variant(bk, family, variant, activation, splits, args, checkpoint_dir, say, comm))
            metrics = merged_metrics(metrics_path, args, splits, results[-1], comm)
            if root:
                checkpoint.write_json(metrics_path, metrics)
                from .plots import training_figures     # matplotlib is loaded only when figures are drawn
                training_figures(metrics["results"], args.out, args.dataset)   # training_curves.png, sigma_evolution.png
    say(format_table(results))
    say(f"total run time {time.perf_counter() - start:.1f} s; results in {metrics_path}")
    return metrics


def parser(family, doc=None, out=None):
    """The command line of a training script for ``family``: :func:`add_arguments`, described
    by the first paragraph of ``doc`` (the script's docstring); ``out``: its default output
    folder (default ``runs/<dataset>-<family>``)."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0], formatter_class=HELP_FORMAT)
    add_arguments(p, family, out or f"runs/{family.datasets[0]}-{family.name}")
    return p


def main(family_name, argv=None, doc=None, out=None):
    """A whole training script for the family called ``family_name``: :func:`parser`, then :func:`run`."""
    family = get_family(family_name)
    return run(parser(family, doc, out).parse_args(argv), family)


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


def merged_metrics(path, args, splits, result, comm=None):
    """The ``metrics.json`` at ``path`` with ``result`` merged in (replacing that variant's
    earlier entry); ``comm``: the ranks that trained it, if data-parallel."""
    kept = [r for r in read_metrics(path, args.overwrite)["results"]
            if (r["variant"], r["activation"]) != (result["variant"], result["activation"])]
    metrics = {"dataset": args.dataset, "backend": args.backend, "kernels": args.kernels,
               "dtype": args.dtype, "seed": args.seed, "epochs": args.epochs, "batch_size": args.batch_size,
               "ranks": 1 if comm is None else comm.size,
               "split_sizes": {k: int(len(v[1])) for k, v in splits.items()},
               "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "results": kept + [result]}
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
