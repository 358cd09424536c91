"""The paper's robustness tables (Tables 3-6) measured: every model under white-box attacks
(FGSM, L-BFGS, PGD, and EOT-PGD), natural corruptions and transfer attacks from a black-box
surrogate, with noise at evaluation as the paper has it and switched on and off; the budget
sweep; and the sanity checks of a careful robustness evaluation. The paper's published numbers
and its claims: :mod:`manualbp.attacks.published`.

Images are ``(N, C, H, W)`` pixels in ``[0, 1]``; every cell is the dict of
:func:`manualbp.evaluate.accuracy_over_draws` (attacks add the perturbation norms ``l2`` and
``linf``; corruptions hold their five severities).
"""
from dataclasses import dataclass, field

from .attacks import eot, eot_pgd, fgsm, lbfgs, pgd
from .attacks.base import draws_noise
from .attacks.published import COLUMNS
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .evaluate import ATTACK_BATCH, DRAWS, accuracy_over_draws, noise_defaults, perturbation_norms, predict, run_attack
from .model import evaluating

EXTRA_COLUMNS = ("eot_pgd", "ori_noise_on", "ori_noise_off", "pgd_noise_on", "pgd_noise_off")


#: The first number after the seed of each kind of cell's noise streams (:func:`on_own_streams`).
WHITE_BOX_STREAM, CORRUPTION_STREAM, TRANSFER_STREAM = 0xA77AC, 0xC022, 0x7BB


@dataclass
class Settings:
    """What the robustness table runs: the Table 2 ``attacks`` and the ``corruptions`` table of
    the dataset (:class:`manualbp.datasets.Dataset`), and the measurement choices.

    ``lbfgs_batch``: the paper's L-BFGS optimises one batch as one objective (its code: test
    batches of 128), and with an iteration cap the result depends on that batch size."""
    attacks: dict
    corruptions: str
    draws: int = DRAWS
    eot_draws: int = eot.DRAWS
    batch_size: int = ATTACK_BATCH
    lbfgs_batch: int = 128
    seed: int = 0
    log: object = field(default=print, repr=False)


def _attacks(settings):
    """``{column: (attack, params, batch size)}`` of the white-box columns."""
    p, b = settings.attacks, settings.batch_size
    return {"fgsm": (fgsm, p["fgsm"], b), "lbfgs": (lbfgs, p["lbfgs"], settings.lbfgs_batch),
            "pgd": (pgd, p["pgd"], b), "eot_pgd": (eot_pgd, dict(p["pgd"], draws=settings.eot_draws), b)}


def _attacked(model, attack, params, batch, x, y, settings, noise=None):
    adv = run_attack(model, attack, x, y, noise, batch, **params)
    cell = accuracy_over_draws(model, adv, y, settings.draws, noise)
    cell.update(perturbation_norms(x, adv, model.bk))
    return cell


def adversarial_examples(models, images, y, settings, count=8):
    """The first ``count`` images attacked by white-box FGSM and PGD on each model, for
    :func:`manualbp.plots.adversarial_grid`: returns ``(rows, predictions)``, both keyed by
    ``"<model> FGSM"`` / ``"<model> PGD"`` (and ``"clean"`` for the predictions of the first
    model), images ``(count, C, H, W)`` on the host."""
    x, y = images[:count], y[:count]
    rows, predictions = {}, {}
    for name, model in models.items():
        bk = model.bk
        if not predictions:
            with evaluating(model):
                predictions["clean"] = bk.to_host(predict(model, x))
        for column, attack in (("FGSM", fgsm), ("PGD", pgd)):
            params = settings.attacks[column.lower()]
            adv = run_attack(model, attack, x, y, None, settings.batch_size, **params)
            with evaluating(model):
                predictions[f"{name} {column}"] = bk.to_host(predict(model, adv))
            rows[f"{name} {column}"] = bk.to_host(adv)
    return rows, predictions


def attack_cells(model, x, y, settings, columns=("fgsm", "lbfgs", "pgd", "eot_pgd")):
    """The white-box cells ``columns`` of one model (accuracy on its adversarial examples, with
    the perturbation norms); EOT-PGD is PGD itself when the model draws no noise."""
    with evaluating(model):
        randomised = draws_noise(model)
    cells = {}
    for name, (attack, params, batch) in _attacks(settings).items():
        if name not in columns:
            continue
        if name == "eot_pgd" and not randomised and not params.get("random_start") and "pgd" in cells:
            cells[name] = cells["pgd"]                 # no noise to average over: EOT-PGD is PGD
        else:
            cells[name] = _attacked(model, attack, params, batch, x, y, settings)
    return cells


def white_box(model, x, y, settings):
    """Clean and white-box cells of one model, plus EOT-PGD and Ori / PGD with noise on and off."""
    cells = {"ori": accuracy_over_draws(model, x, y, settings.draws)}
    cells.update(attack_cells(model, x, y, settings))
    same = noise_defaults(model)
    for noise, tag in ((True, "on"), (False, "off")):
        if same in ("both", noise):
            cells[f"ori_noise_{tag}"], cells[f"pgd_noise_{tag}"] = cells["ori"], cells["pgd"]
        else:
            cells[f"ori_noise_{tag}"] = accuracy_over_draws(model, x, y, settings.draws, noise)
            cells[f"pgd_noise_{tag}"] = _attacked(model, pgd, settings.attacks["pgd"], settings.batch_size,
                                                  x, y, settings, noise)
    return cells


def corruption_cells(models, images, y, settings):
    """``{row: {corruption: {"severities": [5 cells], "mean": ...}}}``; each corrupted set is
    made once (seeded) and shown to every model, each drawing noise from its own stream
    (:func:`on_own_streams`)."""
    bk = next(iter(models.values())).bk
    host = bk.to_host(images)
    out = {row: {} for row in models}
    for c, name in enumerate(CORRUPTIONS):
        per_model = {row: [] for row in models}
        for severity in SEVERITIES:
            corrupted = bk.asarray(corrupt(host, name, severity, settings.corruptions, seed=settings.seed))
            for row, model in on_own_streams(models, settings, CORRUPTION_STREAM, c, severity):
                per_model[row].append(accuracy_over_draws(model, corrupted, y, settings.draws))
        for row, cells in per_model.items():
            out[row][name] = {"severities": cells, "mean": sum(cell["mean"] for cell in cells) / len(cells)}
    return out


def transfer_cells(surrogate, models, images, y, settings):
    """Black-box FGSM and L-BFGS: crafted once on the surrogate, replayed on every model.
    Returns ``(cells by row, the surrogate's own clean / white-box cells)``; each model draws
    noise from its own stream (:func:`on_own_streams`)."""
    surrogate.bk.seed([settings.seed, TRANSFER_STREAM])
    own = {"ori": accuracy_over_draws(surrogate, images, y, 1)}
    crafted = {}
    for name in ("fgsm", "lbfgs"):
        attack, params, batch = _attacks(settings)[name]
        adv = run_attack(surrogate, attack, images, y, None, batch, **params)
        own[name] = accuracy_over_draws(surrogate, adv, y, 1)
        own[name].update(perturbation_norms(images, adv, surrogate.bk))
        crafted[name] = adv
    cells = {row: {} for row in models}
    for k, (name, adv) in enumerate(crafted.items()):
        for row, model in on_own_streams(models, settings, TRANSFER_STREAM, k):
            cells[row][f"bb_{name}"] = accuracy_over_draws(model, adv, y, settings.draws)
    return cells, own


def on_own_streams(models, settings, *tag):
    """``(row, model)`` of ``models``, the backend seeded before each from ``(settings.seed,
    *tag, the model's place in models)``: a model's cells do not depend on which other models
    are measured with it, nor on the rank that measures them."""
    for i, (row, model) in enumerate(models.items()):
        model.bk.seed([settings.seed, *tag, i])
        yield row, model


def white_box_rows(models, images, y, settings, only=None):
    """:func:`white_box` cells of each model (of the rows in ``only``, default all), each drawing
    noise from its own stream (:func:`on_own_streams`): a subset measured apart (on another
    rank) gets the cells the whole table gets."""
    cells = {}
    for row, model in on_own_streams(models, settings, WHITE_BOX_STREAM):
        if only is None or row in only:
            settings.log(f"white box: {row}")
            cells[row] = white_box(model, images, y, settings)
    return cells


def robustness_table(models, surrogate, images, y, settings, white=None):
    """Every cell of the paper's layout for each model: ``{row: {column: cell}}`` where a cell
    is the dict of :func:`accuracy_over_draws` (attacks add ``l2``, ``linf``; corruptions hold
    their five severities), and the surrogate's own cells. ``white``: the white-box cells of
    every model when already measured (:func:`white_box_rows` spread over ranks)."""
    white = white_box_rows(models, images, y, settings) if white is None else white
    rows = {row: dict(white[row]) for row in models}
    settings.log("corruptions")
    for row, cells in corruption_cells(models, images, y, settings).items():
        rows[row].update(cells)
    settings.log("transfer attacks")
    transfer, own = transfer_cells(surrogate, models, images, y, settings)
    for row, cells in transfer.items():
        rows[row].update(cells)
    return rows, own


def table_values(rows, columns=COLUMNS + EXTRA_COLUMNS):
    """``{row: {column: mean accuracy}}`` from :func:`robustness_table`'s cells."""
    return {row: {c: cells[c]["mean"] for c in columns if c in cells} for row, cells in rows.items()}


# --- the budget sweep and the sanity checks --------------------------------------------------
def budget_sweep(models, images, y, budgets, steps=10, draws=DRAWS, batch_size=ATTACK_BATCH):
    """FGSM and PGD accuracy at each L-inf ``budget`` (pixel units) for each model: PGD takes
    ``steps`` steps of ``alpha = 2.5 budget / steps`` (Madry et al.), no random start."""
    out = {}
    for row, model in models.items():
        curves = {"budget": [float(b) for b in budgets], "fgsm": [], "pgd": []}
        for budget in budgets:
            for name, attack, params in (("fgsm", fgsm, {"budget": budget}),
                                         ("pgd", pgd, {"budget": budget, "alpha": 2.5 * budget / steps,
                                                       "steps": steps})):
                adv = run_attack(model, attack, images, y, None, batch_size, **params)
                curves[name].append(accuracy_over_draws(model, adv, y, draws)["mean"])
        out[row] = curves
    return out


def sanity_checks(values, sweep, tol=0.02, near_zero=0.05):
    """The checks of a careful robustness evaluation (Carlini et al. 2019), as
    ``[{"check", "row", "passed", "detail"}]``: iterative (PGD) at least as strong as single
    step (FGSM) at every budget of the sweep; EOT-PGD at least as strong as PGD; white box at
    least as strong as transfer (FGSM, at equal budget: the paper's L-BFGS has no budget, so its
    white-box and transfer perturbations differ in size and are not compared); PGD accuracy
    falling as the budget grows, to ``near_zero`` at the largest budget.
    ``tol`` allows for the spread of accuracies measured over noise draws."""
    out = []

    def add(check, row, passed, detail):
        out.append({"check": check, "row": row, "passed": bool(passed), "detail": detail})

    for row, c in sweep.items():
        worse = [f"budget {e:.3g}: PGD {p:.3f} > FGSM {f:.3f}"
                 for e, f, p in zip(c["budget"], c["fgsm"], c["pgd"]) if p > f + tol]
        add("iterative >= single step", row, not worse, "; ".join(worse) or "PGD <= FGSM at every budget")
        rises = [f"budget {e:.3g}" for e, a, b in zip(c["budget"][1:], c["pgd"], c["pgd"][1:]) if b > a + tol]
        add("accuracy falls as the budget grows", row, not rises,
            ("PGD accuracy rises at " + ", ".join(rises)) if rises else "PGD curve non-increasing")
        add("accuracy -> 0 at a large budget", row, c["pgd"][-1] <= near_zero,
            f"PGD accuracy {c['pgd'][-1]:.3f} at budget {c['budget'][-1]:.3g}")
    for row, v in values.items():
        if "eot_pgd" in v:
            add("EOT-PGD >= PGD", row, v["eot_pgd"] <= v["pgd"] + tol,
                f"EOT-PGD {v['eot_pgd']:.3f}, PGD {v['pgd']:.3f}")
        if "fgsm" in v and "bb_fgsm" in v:
            add("white box >= transfer", row, v["fgsm"] <= v["bb_fgsm"] + tol,
                f"FGSM at the same budget: white box {v['fgsm']:.3f}, transfer {v['bb_fgsm']:.3f}")
    return out
