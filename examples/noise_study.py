"""When does learned noise help? The collapse of sigma measured over training, and the remedies
judged under white-box attacks that average over the noise (EOT).

    python examples/noise_study.py --family mlp --dataset fashion-mnist --seed 0 1 2 \
        --at 1 2 5 10 20 30 --out runs/noise-study

Each variant of the family is trained under each training rule:

* ``eq7`` -- the paper's Eq. (7) on the clean training loss;
* ``released`` -- the paper's released code as it runs (sigma from N(0, 1), ``|sigma|``,
  Eq. (3) without ``sign(sigma)``, sigma in the weights' Adam with weight decay);
* ``adversarial`` -- Madry-style training on PGD examples crafted by the engine's own backward
  (the dataset's Table 2 budget, ``--adv-steps`` steps of ``2.5 budget / steps``, random start);
* ``penalty`` -- Eq. (7) plus the prior ``(s/2) sum (log sigma - log target)^2`` on sigma.

The released rule and the prior change nothing for a variant without learned noise, so those
variants run only ``eq7`` and ``adversarial``. At every epoch of ``--at`` the model is evaluated
on the first ``--limit-eval`` test images: clean accuracy (mean and worst-of-K over ``--draws``
noise draws), FGSM, PGD (with its worst-of-K) and EOT-PGD (``--eot-draws``), all with the
dataset's Table 2 settings, and the learned sigma per layer; at the last epoch also the mean
accuracy over the corruptions. Over the seeds each cell gets its mean and a 95% t-interval.
A question gets a verdict only when the intervals separate.

Writes OUT/noise_study.md, .csv, .json and OUT/noise_study.png; each finished run is kept in
OUT/runs/ (a run interrupted goes on from its checkpoint under OUT/checkpoints/).
``mpiexec -n K ... --distributed`` deals the runs out to K ranks.
"""
import manualbp  # noqa: F401  first: before NumPy loads OpenBLAS (manualbp.parallel)
import argparse
import csv
import io
import json
import math
import os
import time

import numpy as np
from scipy import stats

from manualbp import datasets, experiments, get_backend, plots, robustness
from manualbp.checkpoint import write_json, write_text
from manualbp.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from manualbp.evaluate import accuracy_over_draws
from manualbp.model import sigma_summary
from manualbp.train import load_model, train_model
from manualbp.zoo import get_family

TRAININGS = ("eq7", "released", "adversarial", "penalty")
#: The training rules that act on learned noise only.
NOISE_ONLY = ("released", "penalty")
COLUMNS = {"ori": "clean", "ori_worst": "clean worst-of-K", "fgsm": "FGSM", "pgd": "PGD",
           "pgd_worst": "PGD worst-of-K", "eot_pgd": "EOT-PGD", "corruptions": "corruptions (mean)",
           "sigma": "mean sigma"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=experiments.HELP_FORMAT)
    experiments.add_study_arguments(p, seeds=[0, 1, 2], out="runs/noise-study", spread="the runs")
    p.add_argument("--variants", nargs="+", default=None, help="the family's variants to train (default: all)")
    p.add_argument("--activation", default="relu", help="the hidden activation (families that have one)")
    p.add_argument("--trainings", nargs="+", choices=TRAININGS, default=list(TRAININGS))
    p.add_argument("--at", type=int, nargs="+", default=[1, 2, 5, 10, 20, 30],
                   help="evaluate after these epochs (the last is the length of training)")
    p.add_argument("--adv-steps", type=int, default=3, help="PGD steps of adversarial training")
    p.add_argument("--adv-alpha", type=float, default=None,
                   help="their step size (pixels; default 2.5 budget / steps, as Madry et al.)")
    p.add_argument("--penalty", type=float, default=1e-3, help="strength s of the prior on sigma")
    p.add_argument("--penalty-target", type=float, default=1.0, help="the level the prior pulls towards")
    p.add_argument("--no-corruptions", dest="corruptions", action="store_false",
                   help="skip the corruption accuracy at the last epoch")
    args = p.parse_args(argv)
    check(args)
    return args


def check(args):
    """Refuse bad flags before any work (one line each, see :func:`manualbp.experiments.cli`)."""
    family = experiments.check_study(args, "adv_steps")
    experiments.require(args, min(args.at) >= 1 and args.at == sorted(set(args.at)), "at",
                        "increasing epochs, each at least 1")
    experiments.require(args, experiments.finite(args.penalty) and args.penalty > 0, "penalty", "a positive number")
    experiments.require(args, args.adv_alpha is None or (experiments.finite(args.adv_alpha) and args.adv_alpha > 0),
                        "adv_alpha", "a positive number (pixel units)")
    experiments.require(args, experiments.finite(args.penalty_target) and args.penalty_target > 0,
                        "penalty_target", "a positive number")
    variants = args.variants or list(family.variants)
    experiments.require(args, set(variants) <= set(family.variants), "variants",
                        f"variants of {args.family}: {', '.join(family.variants)}")
    activations = family.activations
    experiments.require(args, activations == (None,) or args.activation in activations, "activation",
                        f"one of {', '.join(a for a in activations if a)}")
    args.variants = variants
    if activations == (None,):
        args.activation = None                          # the family has no choice of activation
    experiments.check_out(args)


def training_rule(name, args):
    """The training set-up of rule ``name``: the dataset's Table 1 and the rule's change."""
    data = datasets.get_dataset(args.dataset)
    setup = dict(data.training, epochs=args.at[-1])
    if name == "released":
        setup["sigma_update"] = "released"
    elif name == "adversarial":
        budget = data.attacks["pgd"]["budget"]
        alpha = 2.5 * budget / args.adv_steps if args.adv_alpha is None else args.adv_alpha
        setup["adversarial"] = {"budget": budget, "alpha": alpha, "steps": args.adv_steps}
    elif name == "penalty":
        setup["sigma_penalty"] = {"strength": args.penalty, "target": args.penalty_target}
    return setup


def learns_noise(family, variant, activation, dataset):
    """Whether ``variant`` has learned noise levels (the released rule and the prior act on them)."""
    model = family.model(get_backend("numpy", "float32", 0), variant, activation, dataset)
    return any(name.endswith("sigma") for name, _, _ in model.parameter_slots())


def evaluate(model, x, y, settings):
    """The cells of one model at one epoch (see the module docstring)."""
    clean = accuracy_over_draws(model, x, y, settings.draws)
    attacked = robustness.attack_cells(model, x, y, settings, ("fgsm", "pgd", "eot_pgd"))
    sigmas = [s["mean"] for s in sigma_summary(model).values()]
    return {"ori": clean["mean"], "ori_worst": clean["all"], "fgsm": attacked["fgsm"]["mean"],
            "pgd": attacked["pgd"]["mean"], "pgd_worst": attacked["pgd"]["all"],
            "eot_pgd": attacked["eot_pgd"]["mean"], "sigma": float(np.mean(sigmas)) if sigmas else None,
            "sigma_layers": sigma_summary(model)}


#: The flags that define what a run measures: a record made with other values is not reused.
RUN_FLAGS = ("dataset", "activation", "at", "draws", "eot_draws", "attack_batch", "adv_steps", "adv_alpha",
             "penalty", "penalty_target", "limit_train", "limit_eval", "limit_batches", "kernels")


def run_settings(args):
    return {flag: getattr(args, flag) for flag in RUN_FLAGS}


def unit_name(unit):
    rule, variant, seed = unit
    return f"{variant}-{rule}-seed{seed}"


def train_and_follow(args, bk, family, unit, splits, settings):
    """Train one run ``(rule, variant, seed)``, evaluating after each epoch of ``--at``; returns
    its record. The record is written after each evaluation (``finished`` at the end) and the
    checkpoint after each epoch, so an interrupted run goes on exactly where it stopped."""
    rule, variant, seed = unit
    path = os.path.join(args.out, "checkpoints", f"{unit_name(unit)}.npz")
    record_path = os.path.join(args.out, "runs", f"{unit_name(unit)}.json")
    record = {"rule": rule, "variant": variant, "seed": seed, "curve": [], "checkpoint": path, "seconds": 0.0,
              "test_images": int(len(splits["test"][1])), "train_images": int(len(splits["train"][1])),
              "settings": run_settings(args)}
    if os.path.exists(record_path):
        with open(record_path) as f:
            record = json.load(f)
        if record.get("settings") != run_settings(args):
            raise experiments.SettingError(f"{record_path} was measured with other settings "
                                           f"({record.get('settings')}): pass another --out")
    build = lambda b, **more: family.model(b, variant, args.activation, args.dataset, **more)  # noqa: E731
    training = training_rule(rule, args)
    x, y = splits["test"]
    for epochs in args.at[len(record["curve"]):]:
        t0 = time.perf_counter()
        model, trainer = train_model(bk, build, splits, dict(training, epochs=epochs), seed, checkpoint_path=path,
                                     resume=True, log=None, limit_batches=args.limit_batches)
        bk.seed([seed, 0x57D, epochs])
        record["curve"].append({"epoch": epochs, **evaluate(model.eval(), x, y, settings)})
        record.update(history=trainer.history, seconds=record["seconds"] + time.perf_counter() - t0,
                      finished=epochs == args.at[-1])
        write_json(record_path, record, indent=1)
    return record


def interval(values):
    """``(mean, half-width of the 95% t-interval over the values)``; no width for one value."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None
    return mean, float(stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values)))


def compare(a, b):
    """``"higher"`` / ``"lower"`` when the intervals ``a`` and ``b`` (``(mean, half-width)``)
    separate, else ``None`` (not decided)."""
    if a[1] is None or b[1] is None:
        return None
    if a[0] - a[1] > b[0] + b[1]:
        return "higher"
    if a[0] + a[1] < b[0] - b[1]:
        return "lower"
    return None


def questions(table, learned, plain):
    """The verdicts: each question, the comparisons it rests on and its answer (only when every
    comparison it needs is decided). ``table``: ``{(variant, rule): {column: interval}}``."""
    out = []

    def ask(question, pairs):
        found = [(f"{a[0]} ({a[1]}) vs {b[0]} ({b[1]}), {COLUMNS[c]}", compare(table[a][c], table[b][c]))
                 for a, b, c in pairs if a in table and b in table]
        if not found:
            return
        answer = "yes" if all(r == "higher" for _, r in found) else \
            "no" if all(r is not None for _, r in found) else "not decided"
        out.append({"question": question, "answer": answer,
                    "comparisons": [f"{what}: {result or 'intervals overlap'}" for what, result in found]})

    for n in learned:
        if (n, "eq7") in table and table[(n, "eq7")]["sigma"][1] is not None:
            mean, half = table[(n, "eq7")]["sigma"]
            out.append({"question": f"Does Eq. (7) on the clean loss shrink {n}'s sigma from its start of 1?",
                        "answer": "yes" if mean + half < 1 else "no" if mean - half > 1 else "not decided",
                        "comparisons": [f"mean sigma {mean:.3f} ± {half:.3f} after the last epoch"]})
        ask(f"Does the prior keep {n}'s sigma above Eq. (7)'s?", [((n, "penalty"), (n, "eq7"), "sigma")])
        ask(f"Does adversarial training keep {n}'s sigma above Eq. (7)'s?", [((n, "adversarial"), (n, "eq7"), "sigma")])
        ask(f"Does {n} trained by Eq. (7) resist PGD better than {plain}?", [((n, "eq7"), (plain, "eq7"), "pgd")])
        ask(f"Does the released rule reproduce the paper's pattern for {n} (more robust than {plain} to FGSM "
            "and PGD)?", [((n, "released"), (plain, "eq7"), "fgsm"), ((n, "released"), (plain, "eq7"), "pgd")])
        ask(f"Does the released rule cost {n} clean accuracy against {plain}?",
            [((plain, "eq7"), (n, "released"), "ori")])
        ask(f"Does the released rule's robustness survive EOT ({n} vs {plain} under EOT-PGD)?",
            [((n, "released"), (plain, "eq7"), "eot_pgd")])
        ask(f"Does learned noise add robustness beyond adversarial training alone ({n} vs {plain}, both "
            "adversarially trained)?", [((n, "adversarial"), (plain, "adversarial"), "pgd"),
                                        ((n, "adversarial"), (plain, "adversarial"), "eot_pgd")])
        ask(f"Does the prior on sigma make {n} more robust than {plain} under EOT-PGD?",
            [((n, "penalty"), (plain, "eq7"), "eot_pgd")])
    return out


def summarise(records, args):
    """``(table, curves)``: per (variant, rule) the interval of each column at the last epoch,
    and the mean curve over seeds for the figure."""
    groups = {}
    for r in records:
        groups.setdefault((r["variant"], r["rule"]), []).append(r)
    table, curves = {}, {}
    for key, runs in groups.items():
        last = [r["curve"][-1] for r in runs]
        table[key] = {c: interval([cells.get(c) for cells in last]) for c in COLUMNS}
        curves[f"{key[0]} {key[1]}"] = {
            "epoch": list(args.at),
            **{c: None if runs[0]["curve"][0].get(c) is None else
               [float(np.mean([r["curve"][i][c] for r in runs])) for i in range(len(args.at))]
               for c in ("ori", "pgd", "eot_pgd", "sigma")}}
    return table, curves


def fmt(cell):
    mean, half = cell
    return "-" if mean is None else f"{mean:.3f}" + ("" if half is None else f" ± {half:.3f}")


def markdown(args, table, verdicts, meta):
    lines = [f"# When does learned noise help? {args.family} on {args.dataset}", "",
             f"Seeds {', '.join(map(str, args.seed))}; {meta['test_images']} test images; trained "
             f"{args.at[-1]} epochs on {meta['train_images']} images; evaluated after epochs "
             f"{', '.join(map(str, args.at))}. Attacks: Table 2 ({json.dumps(meta['attacks'])}), EOT over "
             f"{args.eot_draws} draws; worst-of-K over {args.draws} draws. Adversarial training: PGD with the "
             f"Table 2 budget, {args.adv_steps} steps of {meta['adv_alpha']:.4f}, random start. Prior on sigma: strength "
             f"{args.penalty}, target {args.penalty_target}. Each cell: mean ± the half-width of the 95% "
             f"t-interval over the seeds, after the last epoch. Run time {meta['seconds'] / 60:.0f} min"
             f" on {meta['ranks']} process(es).", "",
             "| variant | training | " + " | ".join(COLUMNS.values()) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for (variant, rule), cells in table.items():
        lines.append(f"| {variant} | {rule} | " + " | ".join(fmt(cells[c]) for c in COLUMNS) + " |")
    lines += ["", "## Verdicts", "", "A question is answered only when the intervals of every comparison it "
              "rests on separate.", ""]
    for v in verdicts:
        lines.append(f"- {v['question']} **{v['answer']}** ({'; '.join(v['comparisons'])})")
    lines += ["", "![robustness and sigma against epochs](noise_study.png)"]
    return "\n".join(lines) + "\n"


def write_csv(path, table):
    f = io.StringIO()
    w = csv.writer(f)
    w.writerow(["variant", "training"] + list(COLUMNS) + [f"ci95_{c}" for c in COLUMNS])
    for (variant, rule), cells in table.items():
        w.writerow([variant, rule] + [cells[c][0] for c in COLUMNS] + [cells[c][1] for c in COLUMNS])
    write_text(path, f.getvalue())


def main(argv=None):
    args = parse(argv)
    family = get_family(args.family, args.dataset)
    data = datasets.get_dataset(args.dataset)
    comm, bk = experiments.study_setup(args)
    root = comm is None or comm.is_root
    say = print if root else (lambda *_: None)
    t0 = time.perf_counter()
    learned = [v for v in args.variants if learns_noise(family, v, args.activation, args.dataset)]
    plain = family.variants[0]                         # the model without noise
    units = [(rule, variant, seed) for seed in args.seed for variant in args.variants for rule in args.trainings
             if variant in learned or rule not in NOISE_ONLY]
    costliest_first = sorted(units, key=lambda u: u[0] != "adversarial")    # deals the ranks equal shares
    mine = units if comm is None else costliest_first[comm.rank::comm.size]
    records, splits_of = [], {}
    for unit in mine:
        rule, variant, seed = unit
        done = os.path.join(args.out, "runs", f"{unit_name(unit)}.json")
        if os.path.exists(done):
            with open(done) as f:
                record = json.load(f)
            if record.get("finished") and record.get("settings") == run_settings(args):
                records.append(record)
                continue
        if seed not in splits_of:
            splits_of = {seed: datasets.load_splits(bk, args.dataset, args.data_dir, seed, args.limit_train,
                                                    args.limit_eval)}
        splits = splits_of[seed]
        settings = robustness.Settings(data.attacks, data.corruptions, draws=args.draws, eot_draws=args.eot_draws,
                                       batch_size=args.attack_batch, seed=seed, log=lambda *_: None)
        print(f"== {variant} {rule} seed {seed}", flush=True)
        records.append(train_and_follow(args, bk, family, unit, splits, settings))
    if args.corruptions:
        add_corruptions(args, bk, family, records, data)
    if comm is not None:
        records = [r for part in comm.gather(records) for r in part]
    if not root:
        return None
    order = {u: i for i, u in enumerate(units)}
    records.sort(key=lambda r: order[(r["rule"], r["variant"], r["seed"])])
    table, curves = summarise(records, args)
    verdicts = questions(table, learned, plain)
    meta = {"dataset": args.dataset, "family": args.family, "seeds": args.seed, "at": args.at,
            "test_images": records[0]["test_images"], "train_images": records[0]["train_images"],
            "attacks": data.attacks, "ranks": 1 if comm is None else comm.size,
            "adv_alpha": training_rule("adversarial", args)["adversarial"]["alpha"],
            "seconds": time.perf_counter() - t0, "training_seconds": sum(r["seconds"] for r in records),
            "settings": vars(args)}
    text = markdown(args, table, verdicts, meta)
    write_text(os.path.join(args.out, "noise_study.md"), text)
    write_csv(os.path.join(args.out, "noise_study.csv"), table)
    write_json(os.path.join(args.out, "noise_study.json"),
               {"meta": meta, "table": [{"variant": v, "training": r, **{c: list(i) for c, i in cells.items()}}
                                        for (v, r), cells in table.items()],
                "verdicts": verdicts, "curves": curves, "runs": records}, indent=1)
    plots.noise_study(curves, os.path.join(args.out, "noise_study.png"), f"({args.dataset})")
    say(text)
    return {"table": table, "verdicts": verdicts, "records": records}


def add_corruptions(args, bk, family, records, data):
    """The mean corruption accuracy of each run's final model, added to its last cells: each
    corrupted set is made once per seed, and each model is evaluated on it with noise drawn from
    its own stream (seeded by the run and the set), so the cell does not depend on which other
    runs are evaluated with it."""
    for seed in sorted({r["seed"] for r in records}):
        runs = [r for r in records if r["seed"] == seed and "corruptions" not in r["curve"][-1]]
        if not runs:
            continue
        x, y = datasets.load_splits(bk, args.dataset, args.data_dir, seed, args.limit_train, args.limit_eval)["test"]
        host = bk.to_host(x)
        models = [load_model(bk, lambda b, v=r["variant"], **more: family.model(b, v, args.activation, args.dataset,
                                                                                **more), r["checkpoint"])
                  for r in runs]
        sums = [0.0] * len(runs)
        for c, name in enumerate(CORRUPTIONS):
            for severity in SEVERITIES:
                corrupted = bk.asarray(corrupt(host, name, severity, data.corruptions, seed=seed))
                for i, (r, model) in enumerate(zip(runs, models)):
                    bk.seed([seed, robustness.CORRUPTION_STREAM, family.variants.index(r["variant"]),
                             TRAININGS.index(r["rule"]), c, severity])
                    sums[i] += accuracy_over_draws(model, corrupted, y, args.draws)["mean"]
        for r, total in zip(runs, sums):
            r["curve"][-1]["corruptions"] = total / (len(CORRUPTIONS) * len(SEVERITIES))
            write_json(os.path.join(args.out, "runs", f"{unit_name((r['rule'], r['variant'], seed))}.json"), r,
                       indent=1)


if __name__ == "__main__":
    experiments.cli(main)
