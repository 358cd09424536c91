"""Certified robustness by randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019) of the MLP
and CNN variants: through each model's own first noise layer, or through Gaussian noise on the
input, with the certified accuracy against the L2 radius.

    python examples/certify.py --dataset fashion-mnist --family mlp --variant mlpn --activation relu \
        --epochs 5 --smoothing first-noise-layer --limit-eval 500 --out runs/certify
    python examples/certify.py --checkpoints runs/mlp --smoothing input --input-noise-scale 0.25 \
        --limit-eval 500 --out runs/certify-input

Certifies checkpoints written by the training scripts (``--checkpoints DIR``:
``DIR/checkpoints/<variant>-<activation>.npz``, or ``DIR/<name>.npz``), or trains the models first
with the training scripts' flags (``--variant``, ``--activation``, ``--epochs``, ``--sigma-update``,
``--input-noise S`` for Gaussian data augmentation, the remedies, ...; their checkpoints go to
OUT/checkpoints, ``--resume`` continues them), then runs Cohen's CERTIFY (``--n0`` draws to pick
the class, ``--n`` draws to bound its probability from below at level ``1 - --alpha``, abstaining
below 1/2) on the first ``--limit-eval`` images of the test split of ``--seed`` (default: all of
them), drawing ``--batch`` noise samples per forward pass (:mod:`manualbp.certify`).

``--smoothing first-noise-layer`` (default) smooths with the model's first noise layer, in
evaluation mode with every noise layer drawing (``model.eval(noise=True)``: the "+" variants'
fixed noise too); a variant without noise is refused, or skipped under ``--variant all``.
``--smoothing input`` smooths with ``x + s * eps`` on the pixels, the model as the paper evaluates
it (learned noise on, fixed noise off); ``s`` is ``--input-noise-scale``, by default each model's
own training ``--input-noise`` where that is positive, else 0.25.

Writes OUT/certify.json (per model and per image: every number the tables are computed from),
OUT/certify.csv, OUT/certify.md and OUT/certified_accuracy.png. Certified accuracy at radius r:
the fraction of the images whose smoothed prediction is the label with a certified radius of at
least r (L2, pixels in [0, 1]); its interval is a two-sided 95% Clopper-Pearson interval over
the images.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import csv
import io
import os
import time

from manualbp import certify, checkpoint, datasets, experiments, plots, progress
from manualbp.backend import get_backend
from manualbp.checkpoint import write_json, write_text
from manualbp.model import noise_layers
from manualbp.train import load_model
from manualbp.zoo import FAMILIES, get_family, model_name

#: The families certified (chains of layers whose first noise layer can smooth).
CERTIFIED_FAMILIES = ("mlp", "cnn")
SMOOTHINGS = (certify.FirstNoiseLayer.name, certify.InputNoise.name)
#: The radii of the tables (L2, pixel units), as the keys of ``certified_accuracy``.
RADII = ("0", "0.25", "0.5", "0.75", "1.0")
#: The level of the intervals of certified accuracy over the images (two-sided Clopper-Pearson).
LEVEL = 0.95
#: Input smoothing's scale for a model not trained with input noise.
DEFAULT_SCALE = 0.25
#: Seeds the smoothing noise of every model: ``bk.seed([seed, CERTIFY_STREAM])``.
CERTIFY_STREAM = 0xCE27


def parse(argv=None):
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--family", default="mlp")
    known, _ = first.parse_known_args(argv)
    family = FAMILIES[known.family if known.family in CERTIFIED_FAMILIES else "mlp"]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=experiments.HELP_FORMAT)
    p.add_argument("--family", choices=CERTIFIED_FAMILIES, default="mlp", help="the model family")
    experiments.add_arguments(p, family, "runs/certify", distributed=False)
    p.add_argument("--checkpoints", default=None,
                   help="certify the checkpoints in DIR/checkpoints (or DIR) instead of training")
    p.add_argument("--smoothing", choices=SMOOTHINGS, default=certify.FirstNoiseLayer.name,
                   help="the smoothing noise: the model's first noise layer, or Gaussian noise on the input")
    p.add_argument("--input-noise-scale", type=experiments.number, default=None, metavar="S",
                   help="--smoothing input's scale (pixel units; default: the model's training --input-noise "
                        f"where positive, else {DEFAULT_SCALE})")
    p.add_argument("--n0", type=int, default=certify.N0, help="noise draws that pick the class")
    p.add_argument("--n", type=int, default=certify.N, help="noise draws that bound its probability")
    p.add_argument("--alpha", type=experiments.number, default=certify.ALPHA,
                   help="failure probability of each certificate")
    p.add_argument("--batch", type=int, default=1000, help="noise draws per forward pass")
    return p.parse_args(argv)


def check(args):
    """Refuse bad flags before any work (one line each, see :func:`manualbp.experiments.cli`)."""
    experiments.check_arguments(args)
    experiments.check_at_least_one(args, "n0", "n", "batch")
    experiments.require(args, experiments.finite(args.alpha) and 0 < args.alpha < 1, "alpha",
                        "a number in (0, 1) (the failure probability)")
    if args.input_noise_scale is not None:
        experiments.require(args, args.smoothing == certify.InputNoise.name, "input_noise_scale",
                            "no value without --smoothing input")
        experiments.require(args, experiments.finite(args.input_noise_scale) and args.input_noise_scale > 0,
                            "input_noise_scale", "a positive finite number (pixel units)")
    if args.checkpoints is not None and not os.path.isdir(args.checkpoints):
        raise experiments.SettingError(f"--checkpoints {args.checkpoints!r}: no such directory")


def checkpoint_folder(directory):
    """Where checkpoints live under ``directory``: ``directory/checkpoints`` if it exists (a
    training script's ``--out``), else ``directory`` itself."""
    sub = os.path.join(directory, "checkpoints")
    return sub if os.path.isdir(sub) else directory


def requested(args, family):
    """``[(variant, activation)]`` asked for, and whether each was named (not ``all`` / ``both``)."""
    variants = list(family.variants) if args.variant == "all" else [args.variant]
    activations = list(family.activations)
    if activations != [None] and args.activation != "both":
        activations = [args.activation]
    named = args.variant != "all" and (activations == [None] or args.activation != "both")
    return [(v, a) for v in variants for a in activations], named


def family_of(variant):
    return next((name for name, f in FAMILIES.items() if variant in f.variants), None)


def found_checkpoints(args, family, keys, named):
    """``{(variant, activation): path}`` of the checkpoints in ``--checkpoints`` to certify,
    each checked to hold that model of ``family`` trained on ``--dataset`` (from its metadata
    alone)."""
    folder = checkpoint_folder(args.checkpoints)
    paths = {}
    for variant, activation in keys:
        path = os.path.join(folder, model_name(variant, activation) + ".npz")
        if os.path.exists(path):
            paths[variant, activation] = path
        elif named:
            raise experiments.SettingError(f"--checkpoints: {path} not found (expected the checkpoints as the "
                                           "training scripts write them: <variant>-<activation>.npz)")
    if not paths:
        others = sorted({family_of(checkpoint.load_meta(os.path.join(folder, f)).get("settings", {}).get("variant"))
                         for f in sorted(os.listdir(folder)) if f.endswith(".npz")} - {None})
        hint = f" (it holds checkpoints of the {' and '.join(others)} family: pass --family)" if others else ""
        raise experiments.SettingError(f"--checkpoints {args.checkpoints!r}: no checkpoint of the {family.name} "
                                       f"family in {folder}{hint}")
    for (variant, activation), path in paths.items():
        settings = checkpoint.load_meta(path).get("settings", {})
        other = settings.get("variant")
        if other not in family.variants or settings.get("activation") != activation or other != variant:
            owner = family_of(other)
            what = f"a model of the {owner} family ({model_name(other, settings.get('activation'))})" if owner \
                else "not a model of a known family"
            raise experiments.SettingError(f"checkpoint {path} is {what}, not {model_name(variant, activation)} of "
                                           f"--family {family.name}")
        if settings.get("dataset") != args.dataset:
            raise experiments.SettingError(f"checkpoint {path} was trained on {settings.get('dataset')}, not on "
                                           f"--dataset {args.dataset}: pass --dataset {settings.get('dataset')}")
    return paths


def has_noise(bk, family, variant, activation, args):
    """Whether the variant has a noise layer that draws (any mode but ``"off"``)."""
    model = experiments.variant_builder(family, variant, activation, args)(bk)
    return any(layer.mode != "off" for layer in noise_layers(model).values())


def plan(args, family, bk):
    """``([(variant, activation, checkpoint path or None)], skipped)``: the models to certify
    (``None``: trained into OUT/checkpoints), every refusal made before any work, and the
    variants without noise that ``--variant all`` leaves out of first-noise-layer smoothing."""
    keys, named = requested(args, family)
    silent = []
    if args.smoothing == certify.FirstNoiseLayer.name:
        silent = [k for k in keys if not has_noise(bk, family, *k, args)]
        if silent and args.variant != "all":          # a variant named: refused; under all: skipped
            raise experiments.SettingError(
                f"--smoothing first-noise-layer: {model_name(*silent[0])} has no noise layer to smooth with: "
                "certify it with --smoothing input")
        keys = [k for k in keys if k not in silent]
    if args.checkpoints is not None:
        paths = found_checkpoints(args, family, keys, named)
        return [(v, a, paths[v, a]) for v, a in keys if (v, a) in paths], silent
    checkpoint_dir = os.path.join(args.out, "checkpoints")
    for key in keys:
        path = experiments.variant_checkpoint(checkpoint_dir, *key)
        if os.path.exists(path) and not (args.resume or args.overwrite):
            raise experiments.SettingError(f"{path} already exists: pass --resume to continue it (a finished one "
                                           "is certified as it is) or --overwrite to train again")
    if args.resume:
        experiments.check_resumable(args, checkpoint_dir, keys)
    return [(v, a, None) for v, a in keys], silent


def obtain(args, family, bk, splits, variant, activation, path):
    """The model, its checkpoint's path, how it was obtained and its training ``--input-noise``."""
    name = model_name(variant, activation)
    if path is not None:
        print(f"== {name}: loading {path}")
        model = load_model(bk, experiments.variant_builder(family, variant, activation, args), path)
        return model, path, "checkpoint", checkpoint.load_meta(path)["settings"].get("input_noise", 0.0)
    print(f"== {name}: training {args.epochs} epochs (seed {args.seed})")
    checkpoint_dir = os.path.join(args.out, "checkpoints")
    model, trainer = experiments.train_variant(bk, family, variant, activation, splits, args, checkpoint_dir,
                                               log=print)
    epochs = len(trainer.history)
    return model.eval(), experiments.variant_checkpoint(checkpoint_dir, variant, activation), \
        f"{epochs} epochs", args.input_noise


def smoothing_for(args, model, trained_scale):
    """The smoothing source of ``--smoothing`` for ``model``."""
    if args.smoothing == certify.InputNoise.name:
        scale = args.input_noise_scale
        if scale is None:
            scale = trained_scale if trained_scale and trained_scale > 0 else DEFAULT_SCALE
        return certify.InputNoise(model, scale)
    model.eval(noise=True)          # every noise layer draws: the "+" variants' fixed noise too
    try:
        return certify.FirstNoiseLayer(model)
    except ValueError as err:
        raise experiments.SettingError(f"--smoothing first-noise-layer: {err}") from None


def clopper_pearson(k, m, level=LEVEL):
    """The two-sided ``level`` Clopper-Pearson interval of a binomial proportion, ``k`` of ``m``."""
    return [0.0, 1.0] if m == 0 else list(certify.clopper_pearson(k, m, (1 - level) / 2))


def summarise(images):
    """``clean_accuracy``, ``abstain_rate`` and ``certified_accuracy`` (per radius of
    :data:`RADII`: value and interval) of the per-image records alone."""
    m = len(images)
    correct = [im for im in images if im["prediction"] is not None and im["prediction"] == im["label"]]
    certified = {}
    for r in RADII:
        k = sum(1 for im in correct if im["radius"] >= float(r))
        certified[r] = {"value": k / m if m else 0.0, "interval": clopper_pearson(k, m)}
    return {"clean_accuracy": len(correct) / m if m else 0.0,
            "abstain_rate": sum(1 for im in images if im["prediction"] is None) / m if m else 0.0,
            "certified_accuracy": certified}


def certify_model(args, bk, smoothing, x, y, name):
    """CERTIFY on every image of ``x``: the per-image records."""
    labels = bk.to_host(y)
    images = []
    for i in progress.bar(range(len(labels)), name, show=args.progress):
        top, radius, count, p_lower = certify.certify(smoothing, x[i:i + 1], args.n0, args.n, args.alpha,
                                                      args.batch)
        images.append({"index": i, "label": int(labels[i]), "prediction": top, "count": count, "n": args.n,
                       "p_lower": p_lower, "radius": radius})
    return images


def fmt(cell):
    low, high = cell["interval"]
    return f"{cell['value']:.3f} [{low:.3f}, {high:.3f}]"


def markdown(args, meta, entries):
    lines = [f"# Certified robustness: {args.family} on {args.dataset}", "",
             f"Randomized smoothing (Cohen et al. 2019) by {meta['smoothing_text']}; CERTIFY with n0 = {args.n0}, "
             f"n = {args.n}, alpha = {args.alpha} on the first {meta['test_images']} test images (seed {args.seed}). "
             "Certified accuracy at radius r: the fraction of the images whose smoothed prediction is the label "
             "with a certified L2 radius of at least r (pixels in [0, 1]), with its two-sided 95% Clopper-Pearson "
             "interval over the images. Clean accuracy: the smoothed classifier's (CERTIFY's prediction, an "
             "abstention counted wrong). Prefix norm: the radius is PhiInv(p_lower) / prefix norm; bound \"upper\": "
             "the norm is an upper bound (a prefix with ReLUs or pools), the radius a valid lower one.", "",
             "| model | smoothing | prefix norm | bound | clean acc. | abstain | "
             + " | ".join(f"r = {r}" for r in RADII) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(RADII)]
    for e in entries:
        norm = "inf" if e["prefix_norm"] == float("inf") else f"{e['prefix_norm']:.4g}"
        how = e["smoothing"] + (f" s = {e['scale']:g}" if e["scale"] is not None else "")
        lines.append(f"| {e['name']} | {how} | {norm} | {e['bound']} | {e['clean_accuracy']:.3f} | "
                     f"{e['abstain_rate']:.3f} | " + " | ".join(fmt(e["certified_accuracy"][r]) for r in RADII) + " |")
    lines += ["", "Models: " + "; ".join(f"{e['name']} ({e['obtained']}, {e['checkpoint']})" for e in entries) + ".",
              "", "![certified accuracy against the radius](certified_accuracy.png)"]
    return "\n".join(lines) + "\n"


def write_csv(path, entries):
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["name", "checkpoint", "smoothing", "scale", "prefix_norm", "bound", "n0", "n", "alpha", "images",
                "clean_accuracy", "abstain_rate"]
               + [f"{kind}_{r}" for r in RADII for kind in ("certified", "low", "high")])
    for e in entries:
        w.writerow([e["name"], e["checkpoint"], e["smoothing"], "" if e["scale"] is None else e["scale"],
                    e["prefix_norm"], e["bound"], e["n0"], e["n"], e["alpha"], len(e["images"]),
                    e["clean_accuracy"], e["abstain_rate"]]
                   + [v for r in RADII for v in (e["certified_accuracy"][r]["value"],
                                                 *e["certified_accuracy"][r]["interval"])])
    write_text(path, f.getvalue())


def main(argv=None):
    args = parse(argv)
    check(args)
    family = get_family(args.family, args.dataset)
    bk = get_backend(args.backend, args.dtype, args.seed, args.kernels)
    models, skipped = plan(args, family, bk)
    experiments.check_out(args)
    for key in skipped:
        print(f"== {model_name(*key)}: skipped, no noise layer to smooth with (--smoothing input certifies it)")
    t0 = time.perf_counter()
    checkpoint.remove_temporary_files(args.out)
    checkpoint.remove_temporary_files(os.path.join(args.out, "checkpoints"))
    splits = datasets.load_splits(bk, args.dataset, args.data_dir, args.seed, args.limit_train, args.limit_eval)
    x, y = splits["test"]
    entries = []
    for variant, activation, path in models:
        name = model_name(variant, activation)
        model, path, obtained, trained_scale = obtain(args, family, bk, splits, variant, activation, path)
        start = time.perf_counter()
        bk.seed([args.seed, CERTIFY_STREAM])
        smoothing = smoothing_for(args, model, trained_scale)
        images = certify_model(args, bk, smoothing, x, y, name)
        seconds = time.perf_counter() - start
        entry = {"name": name, "variant": variant, "activation": activation, "checkpoint": path,
                 "obtained": obtained, "input_noise": trained_scale, "smoothing": smoothing.name,
                 "scale": getattr(smoothing, "scale", None), "prefix_norm": smoothing.prefix_norm,
                 "bound": smoothing.bound, "n0": args.n0, "n": args.n, "alpha": args.alpha,
                 **summarise(images), "seconds": seconds, "seconds_per_image": seconds / max(1, len(images)),
                 "images": images}
        entries.append(entry)
        print(f"{name}: clean accuracy {entry['clean_accuracy']:.3f}, abstained {entry['abstain_rate']:.3f}, "
              "certified " + ", ".join(f"r={r}: {entry['certified_accuracy'][r]['value']:.3f}" for r in RADII)
              + f" ({seconds / max(1, len(images)):.3f} s per image)")
    smoothing_text = ("each model's first noise layer (every noise layer drawing)"
                      if args.smoothing == certify.FirstNoiseLayer.name else
                      "Gaussian noise on the input (the model's own noise layers as the paper evaluates them)")
    meta = {"dataset": args.dataset, "family": args.family, "seed": args.seed, "backend": args.backend,
            "kernels": args.kernels, "dtype": args.dtype, "test_images": int(len(y)), "smoothing": args.smoothing,
            "radii": list(RADII), "norm": "L2, pixels in [0, 1]",
            "interval": f"two-sided {LEVEL:.0%} Clopper-Pearson over the images",
            "radius": "PhiInv(p_lower) / prefix_norm (0 when abstaining; prefix_norm null: infinite, radius 0)",
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": time.perf_counter() - t0}
    text = markdown(args, dict(meta, smoothing_text=smoothing_text), entries)
    plots.certified_accuracy({e["name"]: [im["radius"] if im["prediction"] == im["label"] else None
                                          for im in e["images"]] for e in entries},
                             os.path.join(args.out, "certified_accuracy.png"),
                             f"{args.family} on {args.dataset}, {args.smoothing} smoothing")
    write_text(os.path.join(args.out, "certify.md"), text)
    write_csv(os.path.join(args.out, "certify.csv"), entries)
    write_json(os.path.join(args.out, "certify.json"), {**meta, "models": entries}, indent=1)
    print(text)
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return {**meta, "models": entries}


if __name__ == "__main__":
    experiments.cli(main)
