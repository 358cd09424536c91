"""The paper's robustness tables (Tables 3-6): every variant of a model family under white-box
attacks (FGSM, L-BFGS, PGD), natural corruptions and transfer attacks, beside the published
numbers, with a check of each of the paper's claims, an epsilon sweep and sanity checks.

    python examples/robustness_table.py --dataset fashion-mnist --family mlp --epochs 5 \
        --limit 1000 --seed 0 --out runs/robustness

Trains every variant (or loads checkpoints written by the example scripts with
``--checkpoints DIR``: ``DIR/checkpoints/<variant>-<activation>.npz``) and the black-box
surrogate, then writes OUT/robustness.md, .csv, .json, OUT/eps_sweep.png and OUT/adversarial_examples.png
(clean test images above their FGSM and PGD versions for the first and the last variant). ``--limit N``
evaluates the first N test images. Attack settings: Table 2 in pixel units
(manualbp.attacks.presets, docs/robustness.md).
"""
import argparse
import csv
import json
import os
import time

from manualbp import evaluate, experiments, get_backend, plots
from manualbp.attacks import build_surrogate, preset
from manualbp.attacks.transfer import SURROGATE_TRAINING
from manualbp.attacks.published import COLUMNS, check_claims, paper_rows
from manualbp.checkpoint import write_json
from manualbp.model import sigma_summary

HEADERS = {"ori": "Ori", "fgsm": "WB FGSM", "lbfgs": "WB L-BFGS", "pgd": "WB PGD",
           "gaussian_noise": "BB Gaussian", "impulse_noise": "BB Impulse", "glass_blur": "BB Glass Blur",
           "contrast": "BB Contrast", "bb_fgsm": "BB FGSM", "bb_lbfgs": "BB L-BFGS",
           "eot_pgd": "EOT-PGD", "ori_noise_on": "Ori noise on", "ori_noise_off": "Ori noise off",
           "pgd_noise_on": "PGD noise on", "pgd_noise_off": "PGD noise off"}
SURROGATE_NAMES = {"mnist": "MLP 784-300-150-10 ReLU", "fashion-mnist": "MLP 784-300-150-10 ReLU",
                   "cifar10": "plain ResNet18, one FC layer", "tiny-imagenet": "plain ResNet34, one FC layer"}
TRAINING = {"mnist": "mnist", "fashion-mnist": "mnist", "cifar10": "cifar10", "tiny-imagenet": "tiny-imagenet"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=list(evaluate.IMAGE_SHAPES), default="fashion-mnist")
    p.add_argument("--family", choices=list(evaluate.FAMILIES), default="mlp")
    p.add_argument("--checkpoints", default=None, help="load trained variants from this directory")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: Table 1)")
    p.add_argument("--train-limit", type=int, default=None, help="train on the first N training images")
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--draws", type=int, default=5, help="noise draws per accuracy of a randomised model")
    p.add_argument("--eot-draws", type=int, default=20, help="noise draws per EOT-PGD step")
    p.add_argument("--attack-batch", type=int, default=500, help="images per attack call")
    p.add_argument("--lbfgs-batch", type=int, default=128,
                   help="images per L-BFGS objective (the paper's code: test batches of 128)")
    p.add_argument("--no-sweep", dest="sweep", action="store_false")
    p.add_argument("--sweep-steps", type=int, default=10, help="PGD steps in the epsilon sweep")
    experiments.add_backend_arguments(p)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/robustness")
    return p.parse_args(argv)


def models_for(args, bk, family, splits):
    """Every variant of ``family`` and the surrogate, loaded from ``--checkpoints`` or trained
    (their checkpoints then go to OUT/checkpoints). Returns ``(models, surrogate, how)``."""
    source = evaluate.model_paths(args.checkpoints) if args.checkpoints else None

    def obtain(label, build, name, options, seed, required):
        if source and os.path.exists(os.path.join(source, name)):
            print(f"== {label}: loading {os.path.join(source, name)}")
            return evaluate.load_model(build(bk), os.path.join(source, name)), "checkpoint"
        if source and required:
            raise SystemExit(f"--checkpoints: {os.path.join(source, name)} not found (expected one "
                             "checkpoint per variant, named as the example scripts write them)")
        epochs = options["epochs"] if args.epochs is None else args.epochs
        print(f"== {label}: training {epochs} epochs")
        model = evaluate.train_model(bk, build, splits, epochs, seed, options,
                                     os.path.join(args.out, "checkpoints", name))
        return model, f"{epochs} epochs"

    options = dict(experiments.PRESETS[TRAINING[args.dataset]])
    models, how = {}, {}
    for row, variant, activation in family.rows():
        build = lambda b, v=variant, a=activation: family.build(b, v, a)  # noqa: E731
        models[row], how[row] = obtain(row, build, experiments.checkpoint_name(variant, activation),
                                       options, args.seed, required=True)
    options.update(SURROGATE_TRAINING.get(args.dataset, {}))
    surrogate, how["surrogate"] = obtain("black-box surrogate", lambda b: build_surrogate(b, args.dataset),
                                         "surrogate.npz", options, args.seed + 1, required=False)
    return models, surrogate, how


def fmt(v):
    return "-" if v is None else f"{v:.3f}"


def markdown(args, family, values, rows, own, claims, checks, caption, paper, meta):
    columns = COLUMNS + evaluate.EXTRA_COLUMNS
    act = family.activations != (None,)
    head = ["Model"] + (["Act."] if act else [])

    def table(vals, cols):
        lines = ["| " + " | ".join(head + [HEADERS[c] for c in cols]) + " |",
                 "|" + "---|" * (len(head) + len(cols))]
        for row in (r for r, _, _ in family.rows()):
            name = row.split("/")
            lines.append("| " + " | ".join(name + [fmt(vals.get(row, {}).get(c)) for c in cols]) + " |")
        return lines

    out = [f"# Robustness table: {args.family} on {args.dataset}", "",
           f"{meta['test_images']} test images, seed {args.seed}, models: {meta['models'][family.rows()[0][0]]} "
           f"(surrogate: {meta['models']['surrogate']}), "
           f"{args.draws} noise draws per accuracy of a randomised model, EOT over {args.eot_draws} draws. "
           f"Attack settings (Table 2, pixel units): {json.dumps(meta['preset'])}.", "",
           "Evaluated as the paper does (learned noise on, fixed noise off at test time); the last "
           "columns switch noise on / off for every model. Black-box corruption columns: mean over "
           "5 severities. Randomised models: mean accuracy over the draws.", "",
           "## This run", ""] + table(values, columns)
    out += ["", f"## Paper: {caption}" + (" (MNIST numbers)" if args.dataset == "fashion-mnist" else ""), ""]
    out += table(paper, COLUMNS)
    randomised = [r for r, cells in rows.items() if cells["ori"]["draws"] > 1]
    if randomised:
        out += ["", "## Randomised models over noise draws (mean / min over draws / worst-of-K)", "",
                "| Model | Ori | WB PGD | EOT-PGD |", "|---|---|---|---|"]
        for r in randomised:
            cells = [rows[r][c] for c in ("ori", "pgd", "eot_pgd")]
            out.append(f"| {r} | " + " | ".join(f"{c['mean']:.3f} / {c['min']:.3f} / {c['all']:.3f}"
                                                for c in cells) + " |")
    out += ["", "## Perturbation sizes (mean per image, pixel units)", "",
            "| Model | FGSM L-inf | PGD L-inf | L-BFGS L2 | L-BFGS L-inf |", "|---|---|---|---|---|"]
    for r, cells in rows.items():
        out.append(f"| {r} | {cells['fgsm']['linf']:.3f} | {cells['pgd']['linf']:.3f} | "
                   f"{cells['lbfgs']['l2']:.2f} | {cells['lbfgs']['linf']:.3f} |")
    out += ["", f"Black-box surrogate ({meta['surrogate']}): clean {own['ori']['mean']:.3f}, "
            f"white-box FGSM {own['fgsm']['mean']:.3f}, white-box L-BFGS {own['lbfgs']['mean']:.3f} "
            f"(L-BFGS mean L2 {own['lbfgs']['l2']:.2f}).", "", "## The paper's claims", ""]
    for c in claims:
        verdict = {True: "confirmed", False: "not confirmed", None: "not measured",
                   "undecided": f"not decided at this size ({meta['test_images']} test images)"}[c["run"]]
        paper_says = {True: "yes", False: "no", None: "-"}[c["paper"]]
        why = f" ({'; '.join(c['run_failures'][:3])})" if c["run_failures"] else ""
        out.append(f"- {c['claim']}: paper's own table supports it: {paper_says}; this run: {verdict}{why}")
    out += ["", "## Sanity checks (Carlini et al. 2019)", ""]
    for c in checks:
        out.append(f"- [{'pass' if c['passed'] else 'FAIL'}] {c['check']} -- {c['row']}: {c['detail']}")
    if args.sweep:
        out += ["", "![epsilon sweep](eps_sweep.png)"]
    out += ["", "![clean and adversarial test images](adversarial_examples.png)"]
    return "\n".join(out) + "\n"


def write_csv(path, family, values, paper):
    columns = COLUMNS + evaluate.EXTRA_COLUMNS
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row"] + list(columns) + [f"paper_{c}" for c in COLUMNS])
        for row, _, _ in family.rows():
            w.writerow([row] + [values[row].get(c, "") for c in columns]
                       + [paper.get(row, {}).get(c, "") for c in COLUMNS])


def main(argv=None):
    args = parse(argv)
    family = evaluate.get_family(args.family, args.dataset)
    attack_preset = preset(args.dataset)
    bk = get_backend(args.backend, "float32", args.seed, args.kernels)
    splits = experiments.load_splits(bk, args.dataset, args.data_dir, args.seed)
    if args.train_limit:
        splits["train"] = tuple(a[:args.train_limit] for a in splits["train"])
    x, y = splits["test"]
    if args.limit:
        x, y = x[:args.limit], y[:args.limit]
    images = x.reshape((len(x),) + evaluate.IMAGE_SHAPES[args.dataset])
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    models, surrogate, how = models_for(args, bk, family, splits)
    settings = evaluate.Settings(attack_preset, draws=args.draws, eot_draws=args.eot_draws,
                                 batch_size=args.attack_batch, lbfgs_batch=args.lbfgs_batch, seed=args.seed)
    rows, own = evaluate.robustness_table(models, surrogate, images, y, settings)
    values = evaluate.table_values(rows)
    sweep = {}
    if args.sweep:
        print("epsilon sweep")
        sweep = evaluate.epsilon_sweep(models, images, y, attack_preset["sweep"], steps=args.sweep_steps,
                                       draws=args.draws, batch_size=args.attack_batch)
        evaluate.plot_sweep(sweep, os.path.join(args.out, "eps_sweep.png"), f"({args.dataset})")
    shown = {r: models[r] for r in dict.fromkeys([next(iter(models)), next(reversed(models))])}
    adversarial, predictions = evaluate.adversarial_examples(shown, images, y, settings)
    shown_count = len(predictions["clean"])
    plots.adversarial_grid(bk.to_host(images[:shown_count]), adversarial,
                           os.path.join(args.out, "adversarial_examples.png"), predictions,
                           labels=bk.to_host(y[:shown_count]),
                           title=f"{args.dataset}: FGSM eps {attack_preset['fgsm']['eps']:.3f}, PGD eps "
                                 f"{attack_preset['pgd']['eps']:.3f} (pixel units); pred by the row's model")
    checks = evaluate.sanity_checks(values, sweep)
    caption, paper = paper_rows(args.family)
    claims = check_claims(args.family, values, int(len(y)))
    meta = {"dataset": args.dataset, "family": args.family, "seed": args.seed, "test_images": int(len(y)),
            "models": how, "draws": args.draws, "eot_draws": args.eot_draws, "preset": attack_preset,
            "lbfgs_batch": args.lbfgs_batch, "surrogate": SURROGATE_NAMES[args.dataset],
            "sigma": {row: sigma_summary(model) for row, model in models.items()},
            "seconds": time.perf_counter() - t0}
    text = markdown(args, family, values, rows, own, claims, checks, caption, paper, meta)
    with open(os.path.join(args.out, "robustness.md"), "w") as f:
        f.write(text)
    write_csv(os.path.join(args.out, "robustness.csv"), family, values, paper)
    write_json(os.path.join(args.out, "robustness.json"),
               {"meta": meta, "cells": rows, "values": values, "surrogate": own,
                "paper": {"caption": caption, "rows": paper}, "claims": claims,
                "sanity_checks": checks, "sweep": sweep}, indent=1)
    print(text)
    return {"values": values, "claims": claims, "checks": checks}


if __name__ == "__main__":
    main()
