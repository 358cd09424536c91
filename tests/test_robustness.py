"""The robustness harness: accuracy over noise draws, batched attacks, the family registry, the
paper's claims and the sanity checks, the budget-sweep plot, and a smoke run of
examples/robustness_table.py writing Markdown, CSV and JSON."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from conftest import ROOT, checkout_env

from manualbp import evaluate, get_backend, plots, robustness, zoo
from manualbp.attacks import fgsm, surrogate_builder
from manualbp.attacks.published import COLUMNS, TABLES, check_claims, paper_rows
from manualbp.datasets import DATASETS

SIZES = (784, 16, 8, 10)


def mlp(bk, variant, activation, **options):
    """A small MLP that takes 1x28x28 images."""
    return zoo.mlp(bk, variant, activation, sizes=SIZES, input_shape=(1, 28, 28), **options)


def settings_for(dataset, **choices):
    data = DATASETS[dataset]
    return robustness.Settings(data.attacks, data.corruptions, log=lambda *_: None, **choices)


def data(bk, n=40, seed=0):
    rng = np.random.default_rng(seed)
    return bk.asarray(rng.random((n, 1, 28, 28))), bk.asarray(rng.integers(0, 10, n), dtype="int64")


def test_accuracy_over_draws_deterministic_and_randomised():
    bk = get_backend("numpy", "float32", 0)
    images, y = data(bk)
    plain = mlp(bk, "mlp", "relu")
    x = images
    cell = evaluate.accuracy_over_draws(plain, x, y, draws=5)
    assert cell["draws"] == 1 and cell["mean"] == cell["min"] == cell["all"]
    assert cell["mean"] == evaluate.accuracy(plain, x, y)
    noisy = mlp(bk, "mlpn", "relu", sigma0=3.0)
    cell = evaluate.accuracy_over_draws(noisy, x, y, draws=6)
    assert cell["draws"] == 6 and cell["all"] <= cell["min"] <= cell["mean"]
    assert evaluate.accuracy_over_draws(noisy, x, y, draws=6, noise=False)["draws"] == 1
    assert noisy.training                                    # evaluation mode is left again


def test_run_attack_in_batches_equals_one_call():
    bk = get_backend("numpy", "float64", 0)
    images, y = data(bk)
    model = mlp(bk, "mlp", "sigmoid")
    x = images
    batched = evaluate.run_attack(model, fgsm, x, y, batch_size=7, budget=0.1)
    model.eval()
    np.testing.assert_allclose(batched, fgsm(model, x, y, 0.1), atol=1e-12)
    norms = evaluate.perturbation_norms(x, batched, bk)
    assert abs(norms["linf"] - 0.1) < 1e-9 and norms["l2"] > 0


def test_adversarial_examples_feed_the_image_grid(tmp_path):
    bk = get_backend("numpy", "float32", 0)
    images, y = data(bk, n=12)
    settings = settings_for("fashion-mnist")
    models = {"mlp": mlp(bk, "mlp", "relu"), "mlpn": mlp(bk, "mlpn", "relu")}
    rows, predictions = robustness.adversarial_examples(models, images, y, settings, count=5)
    assert list(rows) == ["mlp FGSM", "mlp PGD", "mlpn FGSM", "mlpn PGD"]
    assert set(predictions) == {"clean", *rows}
    clean = bk.to_host(images[:5])
    for name, adv in rows.items():
        budget = settings.attacks[name.split()[1].lower()]["budget"]
        assert adv.shape == clean.shape and 0 <= adv.min() and adv.max() <= 1
        assert np.abs(adv - clean).max() <= budget + 1e-6 and np.abs(adv - clean).max() > 0
        assert predictions[name].shape == (5,)
    path = plots.adversarial_grid(clean, rows, str(tmp_path / "adv.png"), predictions)
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == plots.figure_pixels(5, 5, (plots.TILE, plots.TILE))[::-1]


def test_white_box_cells_and_noise_on_off_columns():
    bk = get_backend("numpy", "float32", 0)
    images, y = data(bk, n=20)
    settings = settings_for("fashion-mnist", draws=2, eot_draws=2)
    plain = robustness.white_box(mlp(bk, "mlp", "relu"), images, y, settings)
    assert set(plain) == {"ori", "fgsm", "lbfgs", "pgd", "eot_pgd", "ori_noise_on", "ori_noise_off",
                          "pgd_noise_on", "pgd_noise_off"}
    assert plain["ori_noise_on"] is plain["ori"] and plain["pgd_noise_off"] is plain["pgd"]
    assert plain["fgsm"]["linf"] == pytest.approx(0.1, abs=1e-6)
    fixed = robustness.white_box(mlp(bk, "mlp+", "relu"), images, y, settings)
    assert fixed["ori_noise_off"] is fixed["ori"] and fixed["ori_noise_on"]["draws"] == 2


def test_white_box_on_a_randomised_cnn():
    bk = get_backend("numpy", "float32", 0)
    images, y = data(bk, n=6)
    settings = settings_for("mnist", draws=2, eot_draws=2)
    cells = robustness.white_box(zoo.get_family("cnn", "mnist").model(bk, "cnn-an"), images, y, settings)
    assert cells["ori"]["draws"] == 2 and cells["pgd"]["linf"] <= 25 / 255 + 1e-6
    assert cells["ori_noise_on"] is cells["ori"] and cells["ori_noise_off"]["draws"] == 1


def test_white_box_on_a_small_resnet_and_its_surrogate():
    """Attacks run through Normalize, BatchNorm and residual blocks (a narrow ResNet18, CIFAR size)."""
    bk = get_backend("numpy", "float32", 0)
    rng = np.random.default_rng(0)
    images = bk.asarray(rng.random((4, 3, 32, 32)))
    y = bk.asarray(rng.integers(0, 10, 4), dtype="int64")
    settings = settings_for("cifar10", draws=2, eot_draws=2)
    model = zoo.resnet18(bk, "resnet18-an", width=4)
    cells = robustness.white_box(model, images, y, settings)
    assert cells["pgd"]["linf"] <= DATASETS["cifar10"].attacks["pgd"]["budget"] + 1e-6
    assert cells["ori_noise_on"]["draws"] == 2 and cells["ori_noise_off"] is cells["ori"]
    assert list(surrogate_builder("cifar10")(bk, width=4).children)[-1] == "fc"


def test_a_models_black_box_cells_do_not_depend_on_the_other_models():
    """A randomised model's corruption and transfer cells are the same whatever the model
    before it draws (each model has its own noise stream)."""
    bk = get_backend("numpy", "float32", 0)
    images, y = data(bk, n=16)
    settings = settings_for("fashion-mnist", draws=3)
    surrogate, target = mlp(bk, "mlp", "relu"), mlp(bk, "mlpn", "relu", sigma0=2.0)
    cells = []
    for first in ("mlp", "mlpn"):                    # the first model draws no noise, then some
        models = {"first": mlp(bk, first, "relu"), "mlpn": target}
        corrupted = robustness.corruption_cells(models, images, y, settings)
        transfer, _ = robustness.transfer_cells(surrogate, models, images, y, settings)
        cells.append((corrupted, transfer))
    (c1, t1), (c2, t2) = cells
    assert c1["mlpn"] == c2["mlpn"] and t1["mlpn"] == t2["mlpn"]
    assert c1["mlpn"]["gaussian_noise"]["severities"][0]["draws"] == 3


def test_family_registry_errors_and_rows():
    family = zoo.get_family("mlp", "fashion-mnist")
    assert [r for r, _, _ in family.rows()] == ["mlp/relu", "mlp/sigmoid", "mlp+/relu", "mlp+/sigmoid",
                                                "mlpn/relu", "mlpn/sigmoid"]
    with pytest.raises(ValueError, match="unknown family 'vgg'"):
        zoo.get_family("vgg", "mnist")
    with pytest.raises(ValueError, match="evaluated on cifar10, not 'mnist'"):
        zoo.get_family("resnet18", "mnist")
    for name, dataset in (("resnet18", "cifar10"), ("resnet34", "tiny-imagenet")):
        assert zoo.get_family(name, dataset).name == name
    assert set(family.rows()[0][0].split("/")) <= set(family.variants) | set(family.activations)
    for name in TABLES:                                   # the registry's rows are the paper's rows
        fam = zoo.FAMILIES[name]
        assert {r for r, _, _ in fam.rows()} == set(paper_rows(name)[1])


def test_claims_on_the_papers_own_numbers():
    for family in TABLES:
        _, rows = paper_rows(family)
        for c in check_claims(family, rows):
            assert c["run"] == c["paper"] and c["paper"] is not None
    claims = {c["claim"]: c for c in check_claims("mlp", paper_rows("mlp")[1])}
    relu = claims["MLPN beats MLP on Ori and on every attack (relu)"]
    assert relu["paper"] is False and "on ori" in relu["paper_failures"][0]
    assert all(c["run"] is None for c in check_claims("cnn", {}))


def test_a_claim_is_decided_only_beyond_its_uncertainty():
    """MLPN 0.60 against MLP+ 0.55: within the binomial uncertainty of 200 test images (+-0.097)
    the claim is not decided; on 10,000 images (+-0.014) it holds; the other way round it fails."""
    from manualbp.attacks.published import Claim
    claim = Claim("MLPN beats MLP+", (("mlpn", "mlp+"),), ("pgd",))
    rows = {"mlpn": {"pgd": 0.60}, "mlp+": {"pgd": 0.55}}
    verdict, notes = claim.check(rows, images=200)
    assert verdict == "undecided" and "+-0.097" in notes[0]
    assert claim.check(rows, images=10000) == (True, [])
    assert claim.check(rows) == (True, [])                      # no size given: plain comparison
    assert claim.check({"mlpn": {"pgd": 0.40}, "mlp+": {"pgd": 0.55}}, images=10000)[0] is False


def test_a_claim_over_seeds_counts_their_spread():
    """The same mean difference of 0.05 on 10,000 images: decided when three seeds agree, not
    when they scatter (differences 0.15, -0.05, 0.05: standard error 0.058 of the mean); one
    seed adds nothing."""
    from manualbp.attacks.published import Claim
    claim = Claim("MLPN beats MLP+", (("mlpn", "mlp+"),), ("pgd",))
    rows = {"mlpn": {"pgd": 0.60}, "mlp+": {"pgd": 0.55}}

    def seeds(*diffs):
        return [{"mlpn": {"pgd": 0.55 + d}, "mlp+": {"pgd": 0.55}} for d in diffs]

    assert claim.check(rows, 10000, seeds(0.049, 0.05, 0.051)) == (True, [])
    verdict, notes = claim.check(rows, 10000, seeds(0.15, -0.05, 0.05))
    assert verdict == "undecided" and "+-0.114" in notes[0]
    assert claim.check(rows, 10000, seeds(0.05)) == claim.check(rows, 10000)
    assert check_claims("mlp", {}, 100, seeds(0.0, 0.1))[0]["run"] is None


def test_sanity_checks_flag_what_they_should():
    sweep = {"good": {"budget": [0, 0.1, 0.3], "fgsm": [0.9, 0.4, 0.2], "pgd": [0.9, 0.2, 0.0]},
             "bad": {"budget": [0, 0.1, 0.3], "fgsm": [0.9, 0.4, 0.2], "pgd": [0.9, 0.5, 0.6]}}
    values = {"good": {"fgsm": 0.3, "bb_fgsm": 0.6, "pgd": 0.2, "eot_pgd": 0.1},
              "bad": {"fgsm": 0.7, "bb_fgsm": 0.6, "pgd": 0.2, "eot_pgd": 0.4}}
    checks = robustness.sanity_checks(values, sweep)
    assert all(c["passed"] for c in checks if c["row"] == "good")
    failed = {c["check"] for c in checks if c["row"] == "bad" and not c["passed"]}
    assert failed == {"iterative >= single step", "accuracy falls as the budget grows", "accuracy -> 0 at a large budget",
                      "EOT-PGD >= PGD", "white box >= transfer"}


def test_budget_sweep_and_plot(tmp_path):
    bk = get_backend("numpy", "float32", 0)
    images, y = data(bk, n=16)
    models = {"a": mlp(bk, "mlp", "relu"), "b": mlp(bk, "mlpn", "relu")}
    sweep = robustness.budget_sweep(models, images, y, (0.0, 0.1, 0.5), steps=3, draws=2)
    assert set(sweep) == {"a", "b"} and len(sweep["a"]["pgd"]) == 3
    path = plots.budget_sweep(sweep, tmp_path / "sweep.png")
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_robustness_table_smoke_run(tmp_path, fashion_mnist):
    """The whole script on real Fashion-MNIST, tiny: 1 epoch on 2,000 images, 200 test images."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "examples" / "robustness_table.py"), "--family", "mlp",
           "--dataset", "fashion-mnist", "--epochs", "1", "--limit-train", "2000", "--limit-eval", "200",
           "--draws", "2", "--eot-draws", "2", "--sweep-steps", "3", "--seed", "0", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=checkout_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("robustness.md", "robustness.csv", "robustness.json", "budget_sweep.png",
                 "adversarial_examples.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "robustness.json").read_text())
    assert set(result["values"]) == {"mlp/relu", "mlp/sigmoid", "mlp+/relu", "mlp+/sigmoid", "mlpn/relu",
                                     "mlpn/sigmoid"}
    assert all(set(COLUMNS) <= set(v) for v in result["values"].values())
    assert result["meta"]["test_images"] == 200 and len(result["claims"]) == 8
    rows = list(csv.DictReader((out / "robustness.csv").open()))
    assert len(rows) == 6 and float(rows[0]["paper_ori"]) == 0.948
    text = (out / "robustness.md").read_text()
    assert "## Paper: Table 3" in text and "## The paper's claims" in text and "Sanity checks" in text
    assert (out / "checkpoints" / "mlpn-sigmoid.npz").exists()
    grid = matplotlib.image.imread(out / "adversarial_examples.png")     # 8 images x (clean + 2 x 2)
    assert grid.shape[:2] == plots.figure_pixels(8, 5, (plots.TILE, plots.TILE))[::-1]


def test_robustness_table_loads_checkpoints_and_refuses_missing_ones(tmp_path, fashion_mnist):
    cmd = [sys.executable, str(ROOT / "examples" / "robustness_table.py"), "--family", "mlp",
           "--checkpoints", str(tmp_path), "--limit-eval", "10", "--out", str(tmp_path / "out")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=checkout_env(), timeout=120)
    assert done.returncode != 0 and "mlp-relu.npz not found" in done.stderr


def test_robustness_table_over_seeds_reports_mean_and_spread(tmp_path, tiny_mnist, load_example):
    """Two seeds, each training every MLP variant and the surrogate: the table holds the mean
    over seeds, the spread, each seed's run, and a claim decided with both uncertainties."""
    table = load_example("robustness_table")
    out = tmp_path / "run"
    result = table.main(["--epochs", "1", "--limit-train", "32", "--limit-eval", "24", "--draws", "1",
                         "--eot-draws", "1", "--no-sweep", "--attack-batch", "24", "--lbfgs-batch", "24",
                         "--seed", "3", "4", "--out", str(out), "--no-progress"])
    assert tiny_mnist == ["fashion-mnist", "fashion-mnist"]                 # one split per seed
    saved = json.loads((out / "robustness.json").read_text())
    assert [r["seed"] for r in saved["runs"]] == [3, 4] and saved["meta"]["seeds"] == [3, 4]
    for row, values in saved["values"].items():
        per_seed = [r["values"][row]["ori"] for r in saved["runs"]]
        assert values["ori"] == pytest.approx(np.mean(per_seed))
        assert saved["spread"][row]["ori"] == pytest.approx(np.std(per_seed, ddof=1))
    for seed in (3, 4):
        assert (out / f"seed-{seed}" / "checkpoints" / "mlpn-relu.npz").is_file()
    text = (out / "robustness.md").read_text()
    assert "seeds 3, 4" in text and " ± " in text and "and the spread over the 2 seeds" in text
    header = next(csv.reader((out / "robustness.csv").open()))
    assert "sd_ori" in header and "paper_ori" in header
    assert {c["claim"] for c in result["claims"]} == {c["claim"] for c in saved["claims"]}
    assert not list(out.glob("**/.tmp*"))


@pytest.mark.parametrize("script, flags, words", [
    ("robustness_table", ["--draws", "0"], "--draws 0: expected at least 1"),
    ("robustness_table", ["--limit-eval", "0"], "--limit-eval 0: expected at least 1"),
    ("robustness_table", ["--seed", "1", "1"], r"--seed \[1, 1\]: expected distinct non-negative integers"),
    ("robustness_table", ["--seed", "-2"], r"--seed \[-2\]: expected distinct non-negative integers"),
    ("robustness_table", ["--family", "resnet18"], "--family 'resnet18': family 'resnet18' is evaluated on "
                                                   "cifar10, not 'fashion-mnist'"),
    ("saliency", ["--samples", "0"], "--samples 0: expected at least 1"),
    ("saliency", ["--noise", "nan"], "--noise nan: expected a non-negative finite number"),
    ("unbiasedness", ["--level", "1"], r"--level 1.0: expected a number in \(0, 1\)"),
    ("unbiasedness", ["--sizes", "8,x"], "--sizes '8,x': expected two or more positive integers"),
    ("unbiasedness", ["--draws", "0"], "--draws 0: expected at least 1"),
])
def test_every_script_refuses_bad_flags_before_any_work(tmp_path, tiny_mnist, load_example, script, flags,
                                                        words):
    from manualbp.experiments import SettingError
    with pytest.raises(SettingError, match=words):
        load_example(script).main(["--out", str(tmp_path / "out"), *flags])
    assert tiny_mnist == []
