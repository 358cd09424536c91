"""Figures (PNG, matplotlib's Agg renderer, no global state): the paper's Fig. 3 training
curves, the learned noise levels over training, Fig. 4 saliency maps, clean vs adversarial
images, accuracy against the attack budget, certified accuracy against the radius, and the
Theorem 2 comparison of gradient estimators.

Plots run on the host: every array is copied to NumPy first. Figure sizes are fixed multiples of
a panel size at :data:`DPI`, so a figure's pixel size is known in advance.
"""
import math
import os

import numpy
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 100
PANEL = (4.0, 3.2)     # inches per panel of a curve plot
TILE = 1.6             # inches per image of an image grid
WIDE = (6.0, 3.6)      # inches per panel of the estimator comparison


def figure_pixels(ncols, nrows, panel):
    """``(width, height)`` in pixels of a figure of ``ncols x nrows`` panels of ``panel`` inches."""
    return round(ncols * panel[0] * DPI), round(nrows * panel[1] * DPI)


def _figure(ncols, nrows, panel):
    fig = Figure(figsize=(ncols * panel[0], nrows * panel[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig, path):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _host(a):
    """A NumPy copy of a host or CuPy array."""
    return numpy.asarray(a.get() if hasattr(a, "get") else a)


def _label(result):
    return result["variant"].upper() + (f" ({result['activation']})" if result.get("activation") else "")


def _styles(results):
    """A colour per variant and a line style per activation, stable across panels."""
    variants = list(dict.fromkeys(r["variant"] for r in results))
    activations = list(dict.fromkeys(r.get("activation") for r in results))
    dashes = ["-", "--", ":", "-."]
    return [{"color": f"C{variants.index(r['variant']) % 10}",
             "linestyle": dashes[activations.index(r.get("activation")) % len(dashes)]} for r in results]


# --- training ------------------------------------------------------------------------------
def _epoch_axis(ax, epochs):
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs and min(epochs) == max(epochs):              # one epoch: one tick, not fractions
        ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    ax.grid(alpha=0.3)


def training_curves(results, path, dataset=""):
    """The paper's Fig. 3: training loss, validation loss and test accuracy per epoch, one line per
    model. ``results``: the ``"results"`` list of ``metrics.json`` (each with ``history``)."""
    fig, axes = _figure(3, 1, PANEL)
    panels = [("train_loss", "training loss", "mean cross-entropy"),
              ("val_loss", "validation loss", "mean cross-entropy"),
              ("test_accuracy", "test accuracy", "fraction of test images correct")]
    for ax, (key, title, unit) in zip(axes[0], panels):
        for result, style in zip(results, _styles(results)):
            history = result["history"]
            ax.plot([h["epoch"] for h in history], [h[key] for h in history], label=_label(result),
                    marker=".", **style)
        ax.set_title(title)
        ax.set_ylabel(unit)
        _epoch_axis(ax, [h["epoch"] for r in results for h in r["history"]])
    fig.legend(*axes[0][2].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    if dataset:
        fig.suptitle(dataset)
    return _save(fig, path)


def _learned(result):
    """Whether the model learns its noise levels: its ``noise_modes`` say so (every result the
    runner writes has them), or else a layer's ``sigma`` changed between epochs."""
    if "noise_modes" in result:
        return "learned" in result["noise_modes"].values()
    history = result["history"]
    return any(h["sigma"][layer] != history[0]["sigma"][layer]
               for h in history for layer in h["sigma"])


def sigma_evolution(results, path, columns=3, dataset=""):
    """Per model with learned noise: each layer's mean ``sigma`` over epochs, with its min--max
    range over the layer's neurons shaded (``history[i]["sigma"]``). Models with fixed or no
    noise are left out; with none left the figure says so."""
    chosen = [r for r in results if r["history"] and _learned(r)]
    ncols = max(1, min(columns, len(chosen)))
    fig, axes = _figure(ncols, max(1, math.ceil(len(chosen) / ncols)), PANEL)
    for ax in axes.flat:
        ax.set_axis_off()
    if not chosen:
        axes[0][0].text(0.5, 0.5, "no learned noise levels in these results", ha="center", va="center")
    for ax, result in zip(axes.flat, chosen):
        ax.set_axis_on()
        epochs = [h["epoch"] for h in result["history"]]
        for i, layer in enumerate(result["history"][-1]["sigma"]):
            stats = {k: [h["sigma"][layer][k] for h in result["history"]] for k in ("mean", "min", "max")}
            ax.plot(epochs, stats["mean"], color=f"C{i % 10}", marker=".", label=layer)
            ax.fill_between(epochs, stats["min"], stats["max"], color=f"C{i % 10}", alpha=0.2)
            if len(epochs) == 1:                               # a band needs two epochs: a bar
                mean = stats["mean"][0]
                ax.errorbar(epochs, [mean], yerr=[[mean - stats["min"][0]], [stats["max"][0] - mean]],
                            color=f"C{i % 10}", capsize=4, alpha=0.6)
        ax.set_title(f"{_label(result)}: sigma per layer")
        ax.set_ylabel("sigma (line: mean; band: min to max)")
        _epoch_axis(ax, epochs)
        ax.legend(fontsize="small")
    if dataset:
        fig.suptitle(f"{dataset}: learned sigma")
    return _save(fig, path)


def training_figures(results, out, dataset=""):
    """Write ``training_curves.png`` and ``sigma_evolution.png`` into ``out``; returns the paths."""
    return [training_curves(results, os.path.join(out, "training_curves.png"), dataset),
            sigma_evolution(results, os.path.join(out, "sigma_evolution.png"), dataset=dataset)]


# --- images -------------------------------------------------------------------------------
def _as_images(x, image_shape=None):
    """Images ``(N, H, W)`` (grey) or ``(N, H, W, 3)`` from ``(N, D)``, ``(N, 1, H, W)``,
    ``(N, 3, H, W)`` or ``(N, H, W)``; ``image_shape`` reshapes flat rows (default square)."""
    x = _host(x)
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        shape = image_shape or ((side, side) if side * side == x.shape[1] else None)
        if shape is None:
            raise ValueError(f"cannot show rows of {x.shape[1]} values as images: pass image_shape")
        x = x.reshape((len(x),) + tuple(shape))
    if x.ndim == 4:
        x = x[:, 0] if x.shape[1] == 1 else x.transpose(0, 2, 3, 1)
    if x.ndim not in (3, 4):
        raise ValueError(f"expected images (N, H, W), (N, C, H, W) or flat (N, D), got {x.shape}")
    return x


def _show(ax, image, title=None, cmap="gray", **limits):
    if image.ndim == 3:
        image = numpy.clip(image, 0, 1)
    ax.imshow(image, cmap=cmap, **limits)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize="small")


def saliency_grid(images, maps, path, image_shape=None, names=None):
    """The paper's Fig. 4: one row per image, the image and then its saliency map under each model.

    ``images`` ``(N, ...)``; ``maps``: ``{model label: maps (N, H, W) or (N, D)}`` (from
    :func:`manualbp.saliency.smoothgrad`). Each map is scaled to its own maximum (the colour
    bar); ``names`` (optional): each image's class name, beside its row."""
    images = _as_images(images, image_shape)
    maps = {label: _as_images(m, image_shape) for label, m in maps.items()}
    fig, axes = _figure(1 + len(maps), len(images), (TILE, TILE))
    shown = None
    for n, row in enumerate(axes):
        _show(row[0], images[n], "image" if n == 0 else None)
        if names is not None:
            row[0].set_ylabel(str(names[n]))
        for ax, (label, m) in zip(row[1:], maps.items()):
            _show(ax, m[n] / (float(m[n].max()) or 1), label if n == 0 else None, cmap="inferno", vmin=0, vmax=1)
            shown = ax.images[-1]
    if shown is not None:
        fig.colorbar(shown, ax=axes[:, 1:], shrink=0.8, label="saliency / its maximum")
    return _save(fig, path)


def adversarial_grid(clean, adversarial, path, predictions=None, image_shape=None, labels=None, title=None):
    """Clean images in the first row, each attack's images in the rows below.

    ``adversarial``: ``{attack name: images (N, ...)}`` or one array; ``predictions`` (optional):
    ``{row name ("clean" or an attack): predicted classes (N,)}``, shown above each image (the
    row name says which model predicted); ``labels`` (optional): the true classes, shown above
    the clean images; ``title``: e.g. the attacks' budgets."""
    if not isinstance(adversarial, dict):
        adversarial = {"adversarial": adversarial}
    rows = {"clean": _as_images(clean, image_shape)}
    rows.update({name: _as_images(a, image_shape) for name, a in adversarial.items()})
    count = len(rows["clean"])
    for name, a in rows.items():
        if len(a) != count:
            raise ValueError(f"{name!r} holds {len(a)} images, the clean row {count}")
    predictions = {k: _host(v) for k, v in (predictions or {}).items()}
    labels = None if labels is None else _host(labels)
    fig, axes = _figure(count, len(rows), (TILE, TILE))
    for ax_row, (name, images) in zip(axes, rows.items()):
        for n, ax in enumerate(ax_row):
            pred = predictions.get(name)
            words = [f"true {int(labels[n])}"] if labels is not None and name == "clean" else []
            words += [f"pred {int(pred[n])}"] if pred is not None else []
            _show(ax, images[n], ", ".join(words) or None, vmin=0, vmax=1)
        ax_row[0].set_ylabel(name)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# --- robustness curves ----------------------------------------------------------------------
def budget_sweep(sweep, path, title=""):
    """Accuracy against the L-inf budget, FGSM and PGD side by side, one curve per model (the
    curves of :func:`manualbp.robustness.budget_sweep`)."""
    fig, axes = _figure(2, 1, (5.5, 4.2))
    for ax, attack in zip(axes[0], ("fgsm", "pgd")):
        for row, curves in sweep.items():
            ax.plot(curves["budget"], curves[attack], marker="o", ms=3, label=row)
        ax.set_title(f"{attack.upper()} {title}".strip())
        ax.set_xlabel("budget (pixel units, L-inf)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
    axes[0][1].legend(fontsize=8)
    return _save(fig, path)


def certified_accuracy(curves, path, title=""):
    """Certified accuracy against the L2 radius (Cohen et al.'s figure), one curve per model: at
    ``r`` the fraction of the images certified correct with a radius of at least ``r``.
    ``curves``: ``{label: [each image's certified radius, None where the smoothed classifier
    abstains or is wrong]}``."""
    fig, axes = _figure(1, 1, (5.5, 4.2))
    ax = axes[0][0]
    top = max([r for radii in curves.values() for r in radii if r is not None] + [1.0]) * 1.05
    for label, radii in curves.items():
        if not radii:
            continue
        correct = numpy.sort(numpy.asarray([r for r in radii if r is not None], dtype=float))
        steps = numpy.concatenate([[0.0], correct, [top]])
        accuracy = numpy.concatenate([len(correct) - numpy.arange(len(correct) + 1), [0]]) / len(radii)
        ax.step(steps, accuracy, where="post", label=label)
    ax.set_xlim(0, top)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("radius (L2, pixel units)")
    ax.set_ylabel("certified accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def noise_study(curves, path, title=""):
    """Robustness and the learned noise level against training epochs: one panel per measure,
    one line per run (``curves``: ``{label: {"epoch": [...], measure: [...]}}`` with the
    measures ``ori``, ``pgd``, ``eot_pgd`` and ``sigma``; a missing measure is left out)."""
    measures = {"ori": "clean accuracy", "pgd": "PGD accuracy", "eot_pgd": "EOT-PGD accuracy",
                "sigma": "mean noise level sigma"}
    fig, axes = _figure(len(measures), 1, (4.6, 3.8))
    for ax, (key, name) in zip(axes[0], measures.items()):
        for label, curve in curves.items():
            if curve.get(key) is not None:
                ax.plot(curve["epoch"], curve[key], marker="o", ms=3, label=label)
        ax.set_title(f"{name} {title}".strip(), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0][-1].set_yscale("log")
    axes[0][0].legend(fontsize=6)
    return _save(fig, path)


# --- Theorem 2: estimators of d E[L] / d sigma -----------------------------------------------
def estimator_comparison(estimates, path, level=0.99):
    """Left: each estimator's mean of ``d E[L] / d sigma_i`` with its ``level`` confidence
    interval, per noise level. Right: each estimator's variance per draw (log scale).
    ``estimates``: :class:`manualbp.estimators.Estimate` objects of the same model."""
    fig, axes = _figure(2, 1, WIDE)
    names = estimates[0].names
    index = numpy.arange(len(names))
    width = 0.8 / len(estimates)
    for k, est in enumerate(estimates):
        offset = (k - (len(estimates) - 1) / 2) * width
        axes[0][0].errorbar(index + offset, est.mean, yerr=est.half_width(level), fmt="o",
                            markersize=3, capsize=2, label=est.method.replace("_", " "))
        axes[0][1].bar(index + offset, est.variance, width, label=est.method.replace("_", " "))
    axes[0][0].axhline(0, color="black", linewidth=0.5)
    axes[0][0].set_title(f"d E[L] / d sigma, mean and {level:.0%} interval")
    axes[0][1].set_yscale("log")
    axes[0][1].set_title("variance per draw")
    for ax in axes[0]:
        ax.set_xticks(index, names, rotation=90, fontsize="x-small")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    return _save(fig, path)
