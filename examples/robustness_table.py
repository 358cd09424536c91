"""The paper's robustness tables (Tables 3-6): every variant of a model family under white-box
attacks (FGSM, L-BFGS, PGD), natural corruptions and transfer attacks, beside the published
numbers, with a check of each of the paper's claims, a budget sweep and sanity checks.

    python examples/robustness_table.py --dataset fashion-mnist --family mlp --epochs 5 \
        --limit-eval 1000 --seed 0 1 2 --out runs/robustness

Trains every variant (or loads checkpoints written by the example scripts with
``--checkpoints DIR``: ``DIR/checkpoints/<variant>-<activation>.npz``) and the black-box
surrogate, then writes OUT/robustness.md, .csv, .json, OUT/budget_sweep.png and OUT/adversarial_examples.png
(clean test images above their FGSM and PGD versions for the first and the last variant).
``--limit-eval N`` evaluates the first N test images. Several seeds train and evaluate every
model once per seed (checkpoints under OUT/seed-<s>/, loaded from DIR/seed-<s>/); the table
shows the mean and the spread over seeds, and a claim is decided only beyond both its binomial
and its seed uncertainty. Attack settings: Table 2 in pixel units (manualbp.datasets,
docs/robustness.md).

``mpiexec -n K python examples/robustness_table.py --distributed ...`` spreads the work over K
ranks: each trains its share of the models (whole models, one rank each), each measures the
white-box cells of its share of the variants, and rank 0 gathers them, adds the corruption and
transfer cells and writes one table -- the table one process writes, cell for cell (with the
same number of threads per process).
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import csv
import io
import json
import os
import time

import numpy as np

from manualbp import datasets, experiments, plots, robustness
from manualbp.attacks import surrogate_builder, surrogate_training
from manualbp.attacks.published import COLUMNS, Z, check_claims, paper_rows
from manualbp.checkpoint import write_json, write_text
from manualbp.model import sigma_summary
from manualbp.train import load_model
from manualbp.zoo import get_family, model_name

HEADERS = {"ori": "Ori", "fgsm": "WB FGSM", "lbfgs": "WB L-BFGS", "pgd": "WB PGD",
           "gaussian_noise": "BB Gaussian", "impulse_noise": "BB Impulse", "glass_blur": "BB Glass Blur",
           "contrast": "BB Contrast", "bb_fgsm": "BB FGSM", "bb_lbfgs": "BB L-BFGS",
           "eot_pgd": "EOT-PGD", "ori_noise_on": "Ori noise on", "ori_noise_off": "Ori noise off",
           "pgd_noise_on": "PGD noise on", "pgd_noise_off": "PGD noise off"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=experiments.HELP_FORMAT)
    experiments.add_study_arguments(p, seeds=[0], out="runs/robustness", spread="the models and the white-box cells")
    p.add_argument("--checkpoints", default=None, help="load trained variants from this directory")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: Table 1)")
    p.add_argument("--lbfgs-batch", type=int, default=128,
                   help="images per L-BFGS objective (the paper's code: test batches of 128)")
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="skip the budget sweep")
    p.add_argument("--sweep-steps", type=int, default=10, help="PGD steps in the budget sweep")
    args = p.parse_args(argv)
    check(args)
    return args


def check(args):
    """Refuse bad flags before any work (one line each, see :func:`manualbp.experiments.cli`)."""
    experiments.check_study(args, "epochs", "lbfgs_batch", "sweep_steps")
    experiments.check_out(args)


def seed_folder(folder, args, seed):
    """``folder`` itself for a single seed, else ``folder/seed-<seed>``."""
    return folder if len(args.seed) == 1 else os.path.join(folder, f"seed-{seed}")


def models_for(args, bk, family, splits, seed, comm=None):
    """Every variant of ``family`` and the surrogate for ``seed``, loaded from ``--checkpoints``
    or trained (their checkpoints then go to OUT[/seed-<s>]/checkpoints). With ``comm`` each
    rank obtains its share of the models and loads the others' checkpoints. Returns
    ``(models, surrogate, how)``."""
    source = checkpoint_folder(seed_folder(args.checkpoints, args, seed)) if args.checkpoints else None
    out = os.path.join(seed_folder(args.out, args, seed), "checkpoints")
    data = datasets.get_dataset(args.dataset)
    epochs = {} if args.epochs is None else {"epochs": args.epochs}
    units = {}                                     # key -> (builder, checkpoint name, set-up, seed)
    for row, variant, activation in family.rows():
        name = model_name(variant, activation)
        if source and not os.path.exists(os.path.join(source, f"{name}.npz")):
            raise experiments.SettingError(f"--checkpoints: {os.path.join(source, name)}.npz not found (expected "
                                           "one checkpoint per variant, named as the example scripts write them)")
        build = lambda b, v=variant, a=activation, **more: family.model(b, v, a, args.dataset, **more)  # noqa: E731
        units[row] = (build, name, data.training, seed)
    units["surrogate"] = (surrogate_builder(args.dataset), "surrogate", surrogate_training(args.dataset), seed + 1)
    mine = list(units) if comm is None else list(units)[comm.rank::comm.size]
    models, how = {}, {}
    for key in mine:
        build, name, training, unit_seed = units[key]
        models[key], how[key] = experiments.load_or_train(bk, build, name, splits, {**training, **epochs},
                                                          unit_seed, source, out, limit_batches=args.limit_batches)
    if comm is not None:                           # once every rank has written its checkpoints
        how = {k: v for part in comm.gather(how) for k, v in part.items()}
        for key in set(units) - set(mine):
            build, name = units[key][:2]
            folder = source if source and os.path.exists(os.path.join(source, f"{name}.npz")) else out
            models[key] = load_model(bk, build, os.path.join(folder, f"{name}.npz"))
    surrogate = models.pop("surrogate")
    return {row: models[row] for row in units if row != "surrogate"}, surrogate, how


def checkpoint_folder(directory):
    """Where checkpoints live under ``directory``: ``directory/checkpoints`` if it exists (an
    example script's ``--out``), else ``directory`` itself."""
    sub = os.path.join(directory, "checkpoints")
    return sub if os.path.isdir(sub) else directory


def over_seeds(runs):
    """The mean and the sample standard deviation over ``runs`` of each ``values`` entry
    (``{row: {column: value}}`` each; the spread is empty for a single run)."""
    first = runs[0]["values"]
    mean = {row: {c: float(np.mean([r["values"][row][c] for r in runs])) for c in cols}
            for row, cols in first.items()}
    spread = {} if len(runs) < 2 else {
        row: {c: float(np.std([r["values"][row][c] for r in runs], ddof=1)) for c in cols}
        for row, cols in first.items()}
    return mean, spread


def fmt(v, sd=None):
    return "-" if v is None else f"{v:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


def markdown(args, family, values, spread, runs, claims, checks, caption, paper, meta):
    columns = COLUMNS + robustness.EXTRA_COLUMNS
    act = family.activations != (None,)
    head = ["Model"] + (["Act."] if act else [])

    def table(vals, cols, sds=None):
        lines = ["| " + " | ".join(head + [HEADERS[c] for c in cols]) + " |",
                 "|" + "---|" * (len(head) + len(cols))]
        for row in (r for r, _, _ in family.rows()):
            name = row.split("/")
            lines.append("| " + " | ".join(name + [fmt(vals.get(row, {}).get(c), (sds or {}).get(row, {}).get(c))
                                                   for c in cols]) + " |")
        return lines

    first = runs[0]
    seeds = ", ".join(str(r["seed"]) for r in runs)
    several = len(runs) > 1
    out = [f"# Robustness table: {args.family} on {args.dataset}", "",
           f"{meta['test_images']} test images, seed{'s' if several else ''} {seeds}, models: "
           f"{first['models'][family.rows()[0][0]]} (surrogate: {first['models']['surrogate']}), "
           f"{args.draws} noise draws per accuracy of a randomised model, EOT over {args.eot_draws} draws. "
           f"Attack settings (Table 2, pixel units): {json.dumps(meta['attacks'])}.", "",
           "Evaluated as the paper does (learned noise on, fixed noise off at test time); the last "
           "columns switch noise on / off for every model. Black-box corruption columns: mean over "
           "5 severities. Randomised models: mean accuracy over the draws."
           + (f" Each cell: mean ± standard deviation over the {len(runs)} seeds." if several else ""), "",
           "## This run", ""] + table(values, columns, spread)
    out += ["", f"## Paper: {caption}" + (" (MNIST numbers)" if args.dataset == "fashion-mnist" else ""), ""]
    out += table(paper, COLUMNS)
    rows, own, of_seed = first["cells"], first["surrogate"], f" (seed {first['seed']})" if several else ""
    randomised = [r for r, cells in rows.items() if cells["ori"]["draws"] > 1]
    if randomised:
        out += ["", f"## Randomised models over noise draws (mean / min over draws / worst-of-K){of_seed}", "",
                "| Model | Ori | WB PGD | EOT-PGD |", "|---|---|---|---|"]
        for r in randomised:
            cells = [rows[r][c] for c in ("ori", "pgd", "eot_pgd")]
            out.append(f"| {r} | " + " | ".join(f"{c['mean']:.3f} / {c['min']:.3f} / {c['all']:.3f}"
                                                for c in cells) + " |")
    out += ["", f"## Perturbation sizes (mean per image, pixel units){of_seed}", "",
            "| Model | FGSM L-inf | PGD L-inf | L-BFGS L2 | L-BFGS L-inf |", "|---|---|---|---|---|"]
    for r, cells in rows.items():
        out.append(f"| {r} | {cells['fgsm']['linf']:.3f} | {cells['pgd']['linf']:.3f} | "
                   f"{cells['lbfgs']['l2']:.2f} | {cells['lbfgs']['linf']:.3f} |")
    out += ["", f"Black-box surrogate ({meta['surrogate']}){of_seed}: clean {own['ori']['mean']:.3f}, "
            f"white-box FGSM {own['fgsm']['mean']:.3f}, white-box L-BFGS {own['lbfgs']['mean']:.3f} "
            f"(L-BFGS mean L2 {own['lbfgs']['l2']:.2f}).", "", "## The paper's claims", "",
            f"A claim is confirmed only when every difference exceeds {Z} standard errors (a binomial "
            f"interval over the {meta['test_images']} test images"
            + (f" and the spread over the {len(runs)} seeds" if several else "") + ").", ""]
    size = f"{meta['test_images']} test images" + (f", {len(runs)} seeds" if several else "")
    for c in claims:
        verdict = {True: "confirmed", False: "not confirmed", None: "not measured",
                   "undecided": f"not decided at this size ({size})"}[c["run"]]
        paper_says = {True: "yes", False: "no", None: "-"}[c["paper"]]
        why = f" ({'; '.join(c['run_failures'][:3])})" if c["run_failures"] else ""
        out.append(f"- {c['claim']}: paper's own table supports it: {paper_says}; this run: {verdict}{why}")
    out += ["", "## Sanity checks (Carlini et al. 2019)" + (" on the mean over seeds" if several else ""), ""]
    for c in checks:
        out.append(f"- [{'pass' if c['passed'] else 'FAIL'}] {c['check']} -- {c['row']}: {c['detail']}")
    if args.sweep:
        out += ["", f"![budget sweep{of_seed}](budget_sweep.png)"]
    out += ["", f"![clean and adversarial test images{of_seed}](adversarial_examples.png)"]
    return "\n".join(out) + "\n"


def write_csv(path, family, values, spread, paper):
    """One line per row: this run's values, their spread over seeds (``sd_*``, several seeds
    only) and the paper's values (``paper_*``)."""
    columns = COLUMNS + robustness.EXTRA_COLUMNS
    sd_columns = columns if spread else ()
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(["row"] + list(columns) + [f"sd_{c}" for c in sd_columns] + [f"paper_{c}" for c in COLUMNS])
    for row, _, _ in family.rows():
        w.writerow([row] + [values[row].get(c, "") for c in columns]
                   + [spread[row].get(c, "") for c in sd_columns]
                   + [paper.get(row, {}).get(c, "") for c in COLUMNS])
    write_text(path, f.getvalue())


def evaluate_seed(args, bk, family, seed, figures, comm=None):
    """Train (or load) and evaluate every model for ``seed``; with ``figures``, also the budget
    sweep and the adversarial grid. Returns the run's record and the sweep. With ``comm`` the
    models and the white-box cells are spread over the ranks; rank 0 does the rest and the
    other ranks return ``(None, {})``."""
    splits = datasets.load_splits(bk, args.dataset, args.data_dir, seed, args.limit_train, args.limit_eval)
    images, y = splits["test"]
    models, surrogate, how = models_for(args, bk, family, splits, seed, comm)
    data = datasets.get_dataset(args.dataset)
    root = comm is None or comm.is_root
    settings = robustness.Settings(data.attacks, data.corruptions, draws=args.draws, eot_draws=args.eot_draws,
                                   batch_size=args.attack_batch, lbfgs_batch=args.lbfgs_batch, seed=seed,
                                   log=print if root else (lambda *_: None))
    white = None
    if comm is not None:
        share = robustness.white_box_rows(models, images, y, settings, only=list(models)[comm.rank::comm.size])
        white = {row: cells for part in comm.gather(share) for row, cells in part.items()}
        if not root:
            return None, {}
    rows, own = robustness.robustness_table(models, surrogate, images, y, settings, white)
    run = {"seed": seed, "test_images": int(len(y)), "models": how, "cells": rows,
           "values": robustness.table_values(rows), "surrogate": own,
           "sigma": {row: sigma_summary(model) for row, model in models.items()}}
    sweep = {}
    if figures and args.sweep:
        print("budget sweep")
        sweep = robustness.budget_sweep(models, images, y, data.attacks["sweep"], steps=args.sweep_steps,
                                        draws=args.draws, batch_size=args.attack_batch)
        plots.budget_sweep(sweep, os.path.join(args.out, "budget_sweep.png"), f"({args.dataset})")
    if figures:
        shown = {r: models[r] for r in dict.fromkeys([next(iter(models)), next(reversed(models))])}
        adversarial, predictions = robustness.adversarial_examples(shown, images, y, settings)
        count = len(predictions["clean"])
        plots.adversarial_grid(bk.to_host(images[:count]), adversarial,
                               os.path.join(args.out, "adversarial_examples.png"), predictions,
                               labels=bk.to_host(y[:count]),
                               title=f"{args.dataset}: FGSM budget {data.attacks['fgsm']['budget']:.3f}, PGD budget "
                                     f"{data.attacks['pgd']['budget']:.3f} (pixel units); pred by the row's model")
    return run, sweep


def main(argv=None):
    args = parse(argv)
    family = get_family(args.family, args.dataset)
    data = datasets.get_dataset(args.dataset)
    comm, bk = experiments.study_setup(args)
    t0 = time.perf_counter()
    runs, sweep = [], {}
    for i, seed in enumerate(args.seed):
        run, seed_sweep = evaluate_seed(args, bk, family, seed, figures=i == 0, comm=comm)
        runs.append(run)
        sweep = sweep or seed_sweep
    if comm is not None and not comm.is_root:
        return None
    values, spread = over_seeds(runs)
    checks = robustness.sanity_checks(values, sweep)
    caption, paper = paper_rows(args.family)
    claims = check_claims(args.family, values, runs[0]["test_images"],
                          seeds=[r["values"] for r in runs] if len(runs) > 1 else ())
    meta = {"dataset": args.dataset, "family": args.family, "seeds": list(args.seed),
            "test_images": runs[0]["test_images"], "draws": args.draws, "eot_draws": args.eot_draws,
            "attacks": data.attacks, "lbfgs_batch": args.lbfgs_batch, "surrogate": data.surrogate_description,
            "ranks": 1 if comm is None else comm.size, "seconds": time.perf_counter() - t0}
    text = markdown(args, family, values, spread, runs, claims, checks, caption, paper, meta)
    write_text(os.path.join(args.out, "robustness.md"), text)
    write_csv(os.path.join(args.out, "robustness.csv"), family, values, spread, paper)
    write_json(os.path.join(args.out, "robustness.json"),
               {"meta": meta, "values": values, "spread": spread, "runs": runs,
                "paper": {"caption": caption, "rows": paper}, "claims": claims,
                "sanity_checks": checks, "sweep": sweep}, indent=1)
    print(text)
    print(f"total time {time.perf_counter() - t0:.0f} s")
    return {"values": values, "spread": spread, "claims": claims, "checks": checks}


if __name__ == "__main__":
    experiments.cli(main)
