"""Accuracy under attack, corruption and noise, and the paper's robustness table (Tables 3-6).

Evaluation modes: ``noise=None`` evaluates each model as the paper does (each noise layer's own
``eval_noise``: learned noise on, fixed noise off); ``True`` / ``False`` switch every noise layer
on / off. A model that draws noise is measured over ``draws`` independent draws: ``mean``
accuracy, ``min`` over the draws, and ``all`` -- the fraction of images classified correctly in
every draw (worst-of-K). Attacks on such a model take their gradient through a noisy forward
pass, as the paper's do; EOT-PGD averages it over draws, so a gain that is only gradient
obfuscation shows up as a gap between PGD and EOT-PGD.

Images are kept as ``(N, C, H, W)`` pixels in ``[0, 1]`` and reshaped to each model's
``input_shape`` (flat rows for the MLPs). Models and attacks run on the backend (NumPy or CuPy);
hits, norms and corruptions are computed on the host with NumPy, after ``bk.to_host``.
"""
import os
from dataclasses import dataclass, field

import numpy as np

from . import checkpoint, zoo
from .attacks import eot_pgd, fgsm, lbfgs, pgd
from .attacks.base import draws_noise
from .attacks.published import COLUMNS
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .experiments import make_optimizers
from .model import evaluating, noise_layers
from .train import Trainer, model_state

IMAGE_SHAPES = {"mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
                "tiny-imagenet": (3, 64, 64)}
EXTRA_COLUMNS = ("eot_pgd", "ori_noise_on", "ori_noise_off", "pgd_noise_on", "pgd_noise_off")


# --- accuracy --------------------------------------------------------------------------------
def as_input(model, images):
    """``images`` ``(N, C, H, W)`` reshaped to the model's input ``(N, *input_shape)``."""
    return images.reshape((len(images),) + tuple(model.input_shape))


def predict(model, x, batch_size=1000):
    """Predicted classes of ``x`` (already shaped for the model) in the model's current mode."""
    xp = model.bk.xp
    return xp.concatenate([model.forward(x[i:i + batch_size]).argmax(axis=1)
                           for i in range(0, len(x), batch_size)])


def accuracy_over_draws(model, x, y, draws=5, noise=None, batch_size=1000):
    """``{"mean", "min", "all", "draws"}``: accuracy over ``draws`` noise draws (one pass when
    the model draws no noise in this mode); ``all`` is the worst-of-K accuracy per image."""
    bk = model.bk
    with evaluating(model, noise):
        k = draws if draws_noise(model) else 1
        hits = np.stack([bk.to_host(predict(model, x, batch_size) == y) for _ in range(k)])
    per_draw = hits.mean(axis=1)
    return {"mean": float(per_draw.mean()), "min": float(per_draw.min()),
            "all": float(hits.all(axis=0).mean()), "draws": k}


def accuracy(model, x, y, noise=None, batch_size=1000):
    """Accuracy of one pass (one noise draw if the model draws noise)."""
    return accuracy_over_draws(model, x, y, 1, noise, batch_size)["mean"]


def run_attack(model, attack, x, y, noise=None, batch_size=500, **params):
    """``attack(model, xb, yb, **params)`` on batches of ``batch_size``, with the model in the
    evaluation mode ``noise``; returns the adversarial ``x``."""
    xp = model.bk.xp
    with evaluating(model, noise):
        return xp.concatenate([attack(model, x[i:i + batch_size], y[i:i + batch_size], **params)
                               for i in range(0, len(x), batch_size)])


def perturbation_norms(x, adv, bk):
    """Mean L2 and L-inf norm of ``adv - x`` per image (host floats)."""
    d = bk.to_host(adv - x).reshape(len(x), -1).astype(np.float64)
    return {"l2": float(np.sqrt((d ** 2).sum(axis=1)).mean()), "linf": float(np.abs(d).max(axis=1).mean())}


# --- model families --------------------------------------------------------------------------
def _without_activation(builder):
    """``builder(bk, variant)`` as a family builder ``build(bk, variant, activation=None)``."""
    def build(bk, variant, activation=None):
        return builder(bk, variant)
    return build


@dataclass(frozen=True)
class Family:
    """A model family of the paper: its variants (x activations), builder and datasets."""
    name: str
    variants: tuple
    build: object
    datasets: tuple
    activations: tuple = (None,)

    def rows(self):
        """``[(row key, variant, activation)]``: keys ``"variant/activation"`` or ``"variant"``."""
        return [(f"{v}/{a}" if a else v, v, a) for v in self.variants for a in self.activations]

    def check_available(self, dataset):
        if dataset not in self.datasets:
            raise ValueError(f"family {self.name!r} is evaluated on {', '.join(self.datasets)}, "
                             f"not {dataset!r}")


FAMILIES = {
    "mlp": Family("mlp", tuple(zoo.MLP_VARIANTS), zoo.mlp, ("mnist", "fashion-mnist"), ("relu", "sigmoid")),
    "cnn": Family("cnn", tuple(zoo.CNN_VARIANTS), _without_activation(zoo.cnn), ("mnist", "fashion-mnist")),
    "resnet18": Family("resnet18", zoo.RESNET18_VARIANTS, _without_activation(zoo.resnet18), ("cifar10",)),
    "resnet34": Family("resnet34", zoo.RESNET34_VARIANTS, _without_activation(zoo.resnet34),
                       ("tiny-imagenet",)),
}


def register_family(family):
    """Add or replace a :class:`Family`."""
    FAMILIES[family.name] = family


def get_family(name, dataset):
    """The family ``name``, checked to be usable on ``dataset`` (clear errors otherwise)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: expected one of {', '.join(FAMILIES)}")
    family = FAMILIES[name]
    family.check_available(dataset)
    return family


# --- training or loading ---------------------------------------------------------------------
def load_model(model, path):
    """Load the ``model/`` arrays of a checkpoint written by :class:`manualbp.train.Trainer`;
    the model comes back in evaluation mode (each noise layer's own ``eval_noise``)."""
    model.load_state_dict(model_state(checkpoint.load(path)[0]))
    return model.eval()


def train_model(bk, build, splits, epochs, seed, options, path=None, log=print, limit_batches=None):
    """Build (initialised as the example scripts do) and train for ``epochs`` with the Table 1
    ``options`` on ``splits`` (reshaped to the model's input), on at most ``limit_batches``
    batches per epoch; writes a checkpoint to ``path`` when given."""
    bk.seed([seed, 0xC0DE])
    model = build(bk)
    splits = {name: (as_input(model, x), y) for name, (x, y) in splits.items()}
    optimizers, schedule = make_optimizers(model, **options)
    trainer = Trainer(model, optimizers, schedule, batch_size=options.get("batch_size", 128),
                      seed=seed, limit_batches=limit_batches, progress=False)
    trainer.fit(splits, epochs, checkpoint_path=path, log=log)
    return model


# --- the table -------------------------------------------------------------------------------
@dataclass
class Settings:
    """What the robustness table runs: the Table 2 ``preset`` and the measurement choices.

    ``lbfgs_batch``: the paper's L-BFGS optimises one batch as one objective (its code: test
    batches of 128), and with an iteration cap the result depends on that batch size."""
    preset: dict
    draws: int = 5
    eot_draws: int = 20
    batch_size: int = 500
    lbfgs_batch: int = 128
    seed: int = 0
    log: object = field(default=print, repr=False)


def _attacks(settings):
    """``{column: (attack, params, batch size)}`` of the white-box columns."""
    p, b = settings.preset, settings.batch_size
    return {"fgsm": (fgsm, p["fgsm"], b), "lbfgs": (lbfgs, p["lbfgs"], settings.lbfgs_batch),
            "pgd": (pgd, p["pgd"], b), "eot_pgd": (eot_pgd, dict(p["pgd"], draws=settings.eot_draws), b)}


def _attacked(model, attack, params, batch, x, y, settings, noise=None):
    adv = run_attack(model, attack, x, y, noise, batch, **params)
    cell = accuracy_over_draws(model, adv, y, settings.draws, noise)
    cell.update(perturbation_norms(x, adv, model.bk))
    return cell


def _noise_defaults(model):
    """Which switch the paper's evaluation mode equals: ``"both"`` (no noise layers), ``True``
    (all noise on), ``False`` (all off) or ``None`` (mixed)."""
    flags = {bool(layer.eval_noise) for layer in noise_layers(model).values()}
    if not flags:
        return "both"
    return flags.pop() if len(flags) == 1 else None


def adversarial_examples(models, images, y, settings, count=8):
    """The first ``count`` images attacked by white-box FGSM and PGD on each model, for
    :func:`manualbp.plots.adversarial_grid`: returns ``(rows, predictions)``, both keyed by
    ``"<model> FGSM"`` / ``"<model> PGD"`` (and ``"clean"`` for the predictions of the first
    model), images ``(count, C, H, W)`` on the host."""
    images, y = images[:count], y[:count]
    rows, predictions = {}, {}
    for name, model in models.items():
        bk = model.bk
        x = as_input(model, images)
        if not predictions:
            with evaluating(model):
                predictions["clean"] = bk.to_host(predict(model, x))
        for column, attack in (("FGSM", fgsm), ("PGD", pgd)):
            params = settings.preset[column.lower()]
            adv = run_attack(model, attack, x, y, None, settings.batch_size, **params)
            with evaluating(model):
                predictions[f"{name} {column}"] = bk.to_host(predict(model, adv))
            rows[f"{name} {column}"] = bk.to_host(adv).reshape(images.shape)
    return rows, predictions


def white_box(model, images, y, settings):
    """Clean and white-box cells of one model, plus EOT-PGD and Ori / PGD with noise on and off."""
    x = as_input(model, images)
    cells = {"ori": accuracy_over_draws(model, x, y, settings.draws)}
    with evaluating(model):
        randomised = draws_noise(model)
    for name, (attack, params, batch) in _attacks(settings).items():
        if name == "eot_pgd" and not randomised and not params.get("random_start"):
            cells[name] = cells["pgd"]                 # no noise to average over: EOT-PGD is PGD
        else:
            cells[name] = _attacked(model, attack, params, batch, x, y, settings)
    same = _noise_defaults(model)
    for noise, tag in ((True, "on"), (False, "off")):
        if same in ("both", noise):
            cells[f"ori_noise_{tag}"], cells[f"pgd_noise_{tag}"] = cells["ori"], cells["pgd"]
        else:
            cells[f"ori_noise_{tag}"] = accuracy_over_draws(model, x, y, settings.draws, noise)
            cells[f"pgd_noise_{tag}"] = _attacked(model, pgd, settings.preset["pgd"], settings.batch_size,
                                                  x, y, settings, noise)
    return cells


def corruption_cells(models, images, y, settings):
    """``{row: {corruption: {"severities": [5 cells], "mean": ...}}}``; each corrupted set is
    made once (seeded) and shown to every model."""
    bk = next(iter(models.values())).bk
    host = bk.to_host(images)
    out = {row: {} for row in models}
    for name in CORRUPTIONS:
        per_model = {row: [] for row in models}
        for severity in SEVERITIES:
            corrupted = bk.asarray(corrupt(host, name, severity, seed=settings.seed))
            for row, model in models.items():
                per_model[row].append(accuracy_over_draws(model, as_input(model, corrupted), y,
                                                          settings.draws))
        for row, cells in per_model.items():
            out[row][name] = {"severities": cells, "mean": float(np.mean([c["mean"] for c in cells]))}
    return out


def transfer_cells(surrogate, models, images, y, settings):
    """Black-box FGSM and L-BFGS: crafted once on the surrogate, replayed on every model.
    Returns ``(cells by row, the surrogate's own clean / white-box cells)``."""
    xs = as_input(surrogate, images)
    own = {"ori": accuracy_over_draws(surrogate, xs, y, 1)}
    crafted = {}
    for name in ("fgsm", "lbfgs"):
        attack, params, batch = _attacks(settings)[name]
        adv = run_attack(surrogate, attack, xs, y, None, batch, **params)
        own[name] = accuracy_over_draws(surrogate, adv, y, 1)
        own[name].update(perturbation_norms(xs, adv, surrogate.bk))
        crafted[name] = adv.reshape(images.shape)
    cells = {row: {f"bb_{name}": accuracy_over_draws(model, as_input(model, adv), y, settings.draws)
                   for name, adv in crafted.items()} for row, model in models.items()}
    return cells, own


def robustness_table(models, surrogate, images, y, settings):
    """Every cell of the paper's layout for each model: ``{row: {column: cell}}`` where a cell
    is the dict of :func:`accuracy_over_draws` (attacks add ``l2``, ``linf``; corruptions hold
    their five severities), and the surrogate's own cells."""
    bk = next(iter(models.values())).bk
    rows = {}
    for i, (row, model) in enumerate(models.items()):
        settings.log(f"white box: {row}")
        bk.seed([settings.seed, 0xA77AC, i])
        rows[row] = white_box(model, images, y, settings)
    settings.log("corruptions")
    bk.seed([settings.seed, 0xC022])
    for row, cells in corruption_cells(models, images, y, settings).items():
        rows[row].update(cells)
    settings.log("transfer attacks")
    bk.seed([settings.seed, 0x7BB])
    transfer, own = transfer_cells(surrogate, models, images, y, settings)
    for row, cells in transfer.items():
        rows[row].update(cells)
    return rows, own


def table_values(rows, columns=COLUMNS + EXTRA_COLUMNS):
    """``{row: {column: mean accuracy}}`` from :func:`robustness_table`'s cells."""
    return {row: {c: cells[c]["mean"] for c in columns if c in cells} for row, cells in rows.items()}


# --- the epsilon sweep and the sanity checks -------------------------------------------------
def epsilon_sweep(models, images, y, eps_grid, steps=10, draws=5, batch_size=500):
    """FGSM and PGD accuracy at each ``eps`` (pixel units) for each model: PGD takes ``steps``
    steps of ``alpha = 2.5 eps / steps`` (Madry et al.), no random start."""
    out = {}
    for row, model in models.items():
        x = as_input(model, images)
        curves = {"eps": [float(e) for e in eps_grid], "fgsm": [], "pgd": []}
        for eps in eps_grid:
            for name, attack, params in (("fgsm", fgsm, {"eps": eps}),
                                         ("pgd", pgd, {"eps": eps, "alpha": 2.5 * eps / steps, "steps": steps})):
                adv = run_attack(model, attack, x, y, None, batch_size, **params)
                curves[name].append(accuracy_over_draws(model, adv, y, draws)["mean"])
        out[row] = curves
    return out


def plot_sweep(sweep, path, title=""):
    """Accuracy against eps, FGSM and PGD side by side, one curve per model; saved as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, attack in zip(axes, ("fgsm", "pgd")):
        for row, curves in sweep.items():
            ax.plot(curves["eps"], curves[attack], marker="o", ms=3, label=row)
        ax.set_title(f"{attack.upper()} {title}".strip())
        ax.set_xlabel("eps (pixel units, L-inf)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sanity_checks(values, sweep, tol=0.02, near_zero=0.05):
    """The checks of a careful robustness evaluation (Carlini et al. 2019), as
    ``[{"check", "row", "passed", "detail"}]``: iterative (PGD) at least as strong as single
    step (FGSM) at every eps of the sweep; EOT-PGD at least as strong as PGD; white box at least
    as strong as transfer (FGSM, at equal eps: the paper's L-BFGS has no budget, so its white-box
    and transfer perturbations differ in size and are not compared); PGD accuracy falling with
    eps, to ``near_zero`` at the largest eps.
    ``tol`` allows for the spread of accuracies measured over noise draws."""
    out = []

    def add(check, row, passed, detail):
        out.append({"check": check, "row": row, "passed": bool(passed), "detail": detail})

    for row, c in sweep.items():
        worse = [f"eps {e:.3g}: PGD {p:.3f} > FGSM {f:.3f}"
                 for e, f, p in zip(c["eps"], c["fgsm"], c["pgd"]) if p > f + tol]
        add("iterative >= single step", row, not worse, "; ".join(worse) or "PGD <= FGSM at every eps")
        rises = [f"eps {e:.3g}" for e, a, b in zip(c["eps"][1:], c["pgd"], c["pgd"][1:]) if b > a + tol]
        add("accuracy falls as eps grows", row, not rises,
            ("PGD accuracy rises at " + ", ".join(rises)) if rises else "PGD curve non-increasing")
        add("accuracy -> 0 at large eps", row, c["pgd"][-1] <= near_zero,
            f"PGD accuracy {c['pgd'][-1]:.3f} at eps {c['eps'][-1]:.3g}")
    for row, v in values.items():
        if "eot_pgd" in v:
            add("EOT-PGD >= PGD", row, v["eot_pgd"] <= v["pgd"] + tol,
                f"EOT-PGD {v['eot_pgd']:.3f}, PGD {v['pgd']:.3f}")
        if "fgsm" in v and "bb_fgsm" in v:
            add("white box >= transfer", row, v["fgsm"] <= v["bb_fgsm"] + tol,
                f"FGSM at the same eps: white box {v['fgsm']:.3f}, transfer {v['bb_fgsm']:.3f}")
    return out


def model_paths(directory):
    """Where checkpoints live under ``directory``: ``directory/checkpoints`` if it exists (an
    example script's ``--out``), else ``directory`` itself."""
    sub = os.path.join(directory, "checkpoints")
    return sub if os.path.isdir(sub) else directory
