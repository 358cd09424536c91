"""The paper's published robustness results (Tables 3-6) and its claims about them, as data, with
a check of each claim against any table of the same layout.

Columns: clean accuracy, white box (FGSM, L-BFGS, PGD), black box (the four corruptions, mean
over 5 severities; transfer FGSM and L-BFGS). Rows by ``"variant"`` or ``"variant/activation"``.
"""
import math
from dataclasses import dataclass

COLUMNS = ("ori", "fgsm", "lbfgs", "pgd", "gaussian_noise", "impulse_noise", "glass_blur",
           "contrast", "bb_fgsm", "bb_lbfgs")
WHITE = ("fgsm", "lbfgs", "pgd")

TABLES = {
    "mlp": ("Table 3 (MLP, MNIST)", {
        "mlp/relu": (0.948, 0.149, 0.255, 0.105, 0.935, 0.934, 0.879, 0.598, 0.314, 0.690),
        "mlp/sigmoid": (0.936, 0.280, 0.324, 0.207, 0.883, 0.783, 0.885, 0.676, 0.410, 0.749),
        "mlp+/relu": (0.884, 0.283, 0.413, 0.238, 0.875, 0.851, 0.531, 0.531, 0.340, 0.742),
        "mlp+/sigmoid": (0.875, 0.314, 0.433, 0.253, 0.869, 0.834, 0.817, 0.605, 0.432, 0.736),
        "mlpn/relu": (0.921, 0.295, 0.420, 0.267, 0.895, 0.909, 0.835, 0.672, 0.430, 0.745),
        "mlpn/sigmoid": (0.957, 0.336, 0.568, 0.275, 0.946, 0.944, 0.920, 0.710, 0.465, 0.788)}),
    "cnn": ("Table 4 (CNN, MNIST)", {
        "cnn": (0.986, 0.744, 0.616, 0.655, 0.983, 0.971, 0.752, 0.845, 0.917, 0.779),
        "cnn-mlp+": (0.980, 0.788, 0.613, 0.684, 0.977, 0.955, 0.564, 0.794, 0.924, 0.767),
        "cnn-a+": (0.974, 0.757, 0.586, 0.704, 0.951, 0.947, 0.835, 0.575, 0.920, 0.775),
        "cnn-mlpn": (0.990, 0.870, 0.685, 0.752, 0.995, 0.984, 0.788, 0.853, 0.957, 0.818),
        "cnn-an": (0.982, 0.783, 0.766, 0.714, 0.976, 0.973, 0.867, 0.834, 0.928, 0.826)}),
    "resnet18": ("Table 5 (ResNet18, CIFAR-10)", {
        "resnet18": (0.902, 0.234, 0.433, 0.114, 0.558, 0.530, 0.189, 0.544, 0.467, 0.562),
        "resnet18-mlp+": (0.874, 0.254, 0.461, 0.118, 0.553, 0.535, 0.185, 0.536, 0.469, 0.554),
        "resnet18-a+": (0.877, 0.219, 0.401, 0.143, 0.572, 0.543, 0.184, 0.544, 0.493, 0.570),
        "resnet18-mlpn": (0.899, 0.368, 0.450, 0.181, 0.553, 0.514, 0.175, 0.533, 0.482, 0.584),
        "resnet18-an": (0.905, 0.393, 0.489, 0.203, 0.587, 0.557, 0.175, 0.559, 0.562, 0.613)}),
    "resnet34": ("Table 6 (ResNet34, Tiny-ImageNet)", {
        "resnet34": (0.436, 0.082, 0.321, 0.019, 0.397, 0.351, 0.341, 0.331, 0.374, 0.329),
        "resnet34-mlp+": (0.434, 0.076, 0.324, 0.022, 0.383, 0.339, 0.323, 0.333, 0.362, 0.312),
        "resnet34-a+": (0.177, 0.012, 0.145, 0.011, 0.165, 0.155, 0.138, 0.133, 0.158, 0.145),
        "resnet34-mlpn": (0.445, 0.119, 0.402, 0.051, 0.406, 0.364, 0.336, 0.339, 0.389, 0.344),
        "resnet34-an": (0.448, 0.121, 0.402, 0.055, 0.412, 0.375, 0.352, 0.346, 0.389, 0.350)}),
}


#: Standard errors a difference of accuracies must exceed to decide a claim (95 %, two-sided).
Z = 1.96


@dataclass(frozen=True)
class Claim:
    """``text`` holds iff ``row[better] > row[worse]`` (``>=`` when not ``strict``) on every
    column in ``columns``, for every ``(better, worse)`` pair."""
    text: str
    pairs: tuple
    columns: tuple
    strict: bool = True

    def check(self, rows, images=None, seeds=()):
        """``(verdict, notes)`` on ``rows`` (row -> column -> accuracy): ``True`` when every
        comparison holds, ``False`` when one fails, ``None`` when a value is missing.

        A comparison is decided only when the difference exceeds ``Z`` standard errors. With
        ``images`` (the test images behind each accuracy) the variance of a difference of two
        binomial proportions, ``(a (1 - a) + b (1 - b)) / images``, counts; with ``seeds`` (the
        per-seed ``rows`` whose mean is ``rows``, two or more) so does the variance of the mean
        difference over training seeds, ``var_s(a_s - b_s) / S``. A claim with an undecided
        comparison and no failed one is ``"undecided"``. ``notes`` lists the failed (or
        undecided) comparisons."""
        failures, undecided = [], []
        for better, worse in self.pairs:
            for col in self.columns:
                a, b = rows.get(better, {}).get(col), rows.get(worse, {}).get(col)
                if a is None or b is None:
                    return None, [f"{better if a is None else worse}: {col} not measured"]
                margin = Z * math.sqrt(_binomial_variance(a, b, images) + _seed_variance(seeds, better, worse, col))
                note = f"{better} {a:.3f} vs {worse} {b:.3f} on {col}"
                if b - a > margin or (margin == 0 and (a <= b if self.strict else a < b)):
                    failures.append(note)
                elif not (a - b > margin or (margin == 0 and not self.strict)):
                    undecided.append(note + f" (+-{margin:.3f})")
        if failures:
            return False, failures
        return ("undecided", undecided) if undecided else (True, [])


def _binomial_variance(a, b, images):
    """Variance of the difference of two accuracies, each over ``images`` test images (0 without)."""
    return 0.0 if images is None else max(a * (1 - a) + b * (1 - b), 0.0) / images


def _seed_variance(seeds, better, worse, col):
    """Variance of the mean over ``seeds`` of ``better - worse`` on ``col`` (0 for fewer than 2)."""
    diffs = [s[better][col] - s[worse][col] for s in seeds]
    if len(diffs) < 2:
        return 0.0
    mean = sum(diffs) / len(diffs)
    return sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1) / len(diffs)


def _per_activation(text, pairs, columns, strict=True):
    return tuple(Claim(f"{text} ({act})", tuple((f"{b}/{act}", f"{w}/{act}") for b, w in pairs),
                       columns, strict) for act in ("relu", "sigmoid"))


def _versus_all(best, rows, columns, text):
    return Claim(text, tuple((best, r) for r in rows if r != best), columns, strict=False)


CLAIMS = {
    "mlp": (
        *_per_activation("MLP+ beats MLP under every white-box attack", [("mlp+", "mlp")], WHITE),
        *_per_activation("MLP+ pays for it in clean accuracy", [("mlp", "mlp+")], ("ori",)),
        *_per_activation("MLPN beats MLP+ under every white-box attack", [("mlpn", "mlp+")], WHITE),
        *_per_activation("MLPN beats MLP on Ori and on every attack", [("mlpn", "mlp")], COLUMNS),
    ),
    "cnn": (
        Claim("CNN-MLP+ and CNN-A+ beat CNN under every white-box attack",
              (("cnn-mlp+", "cnn"), ("cnn-a+", "cnn")), WHITE),
        Claim("CNN-MLP+ and CNN-A+ pay for it in clean accuracy", (("cnn", "cnn-mlp+"), ("cnn", "cnn-a+")),
              ("ori",)),
        Claim("CNN-MLPN beats CNN on Ori and on every attack", (("cnn-mlpn", "cnn"),), COLUMNS),
        Claim("Noise in the FC layers only (CNN-MLPN) beats noise everywhere (CNN-AN) under white-box "
              "attacks", (("cnn-mlpn", "cnn-an"),), WHITE),
    ),
    "resnet18": (
        Claim("ResNet18-MLP+ and ResNet18-A+ pay for fixed noise in clean accuracy",
              (("resnet18", "resnet18-mlp+"), ("resnet18", "resnet18-a+")), ("ori",)),
        Claim("ResNet18-AN beats ResNet18 on Ori and every attack but glass blur",
              (("resnet18-an", "resnet18"),), tuple(c for c in COLUMNS if c != "glass_blur")),
        _versus_all("resnet18-an", TABLES["resnet18"][1], COLUMNS,
                    "ResNet18-AN is the best variant in every column"),
    ),
    "resnet34": (
        Claim("ResNet34-A+ loses to ResNet34 in every column", (("resnet34", "resnet34-a+"),), COLUMNS),
        Claim("ResNet34-AN beats ResNet34 on Ori and on every attack", (("resnet34-an", "resnet34"),),
              COLUMNS),
        _versus_all("resnet34-an", TABLES["resnet34"][1], COLUMNS,
                    "ResNet34-AN is the best variant in every column"),
    ),
}


def paper_rows(family):
    """``(caption, {row: {column: value}})`` of the paper's table for ``family``."""
    if family not in TABLES:
        raise ValueError(f"no published table for family {family!r}: expected one of {', '.join(TABLES)}")
    caption, rows = TABLES[family]
    return caption, {row: dict(zip(COLUMNS, values)) for row, values in rows.items()}


def check_claims(family, rows, images=None, seeds=()):
    """Each claim of ``family`` checked on the paper's own table and on ``rows`` (this run, on
    ``images`` test images, the mean over ``seeds`` when several: see :meth:`Claim.check`): a
    list of ``{"claim", "paper", "run", "paper_failures", "run_failures"}``."""
    _, published = paper_rows(family)
    out = []
    for claim in CLAIMS[family]:
        paper, paper_fail = claim.check(published)
        run, run_fail = claim.check(rows, images, seeds)
        out.append({"claim": claim.text, "paper": paper, "run": run,
                    "paper_failures": paper_fail, "run_failures": run_fail})
    return out
