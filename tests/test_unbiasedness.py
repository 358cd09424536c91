"""Theorem 2, numerically: the mean of the pathwise estimates delta * eps (Eq. 3) matches central
finite differences of E[L] (common random numbers) within its confidence interval, and the
likelihood-ratio estimator of the same derivative has a much larger variance."""
import json

import pytest

from manualbp import get_backend, zoo
from manualbp.estimators import (METHODS, agreement, compare_estimators, estimate_sigma_gradient,
                                 small_problem)


@pytest.fixture(scope="module")
def mlpn_result():
    bk = get_backend("numpy", "float64", 0)
    model, x, y = small_problem(bk)
    return compare_estimators(model, x, y, draws=20000, group_size=500, seed=0, level=0.99)


def test_pathwise_mean_lies_in_the_interval_of_finite_differences(mlpn_result):
    rows = mlpn_result["rows"]
    assert len(rows) == 6 + 4
    assert all(r["pathwise"]["agrees"] for r in rows), [(r["name"], r["pathwise"]["z"]) for r in rows]


def test_the_comparison_has_power(mlpn_result):
    """The intervals are narrow enough to see a 10% bias and to tell most gradients from zero."""
    pw, fd = mlpn_result["estimates"]["pathwise"], mlpn_result["estimates"]["finite_difference"]
    assert sum(abs(pw.mean) > pw.half_width(0.99)) >= 8
    biased = type(pw)("biased", pw.names, pw.group_means * 1.1, pw.draws_per_group)
    assert not agreement(biased, fd, 0.99)[1].all()


def test_likelihood_ratio_has_larger_variance(mlpn_result):
    for r in mlpn_result["rows"]:
        assert r["likelihood_ratio"]["variance"] > 10 * r["pathwise"]["variance"], r["name"]
    # ... while still estimating the same derivative (unbiased, just noisy)
    assert sum(r["likelihood_ratio"]["agrees"] for r in mlpn_result["rows"]) >= 9


def test_finite_differences_track_the_pathwise_estimate_draw_by_draw():
    """With common random numbers and a small step, each group of FD estimates is close to the
    pathwise one of the same draws: their variances per draw are alike."""
    bk = get_backend("numpy", "float64", 0)
    model, x, y = small_problem(bk, activation="sigmoid")
    pw, fd = (estimate_sigma_gradient(model, x, y, m, 2000, 100, seed=3) for m in METHODS[:2])
    ratio = fd.variance / pw.variance
    assert ((ratio > 0.5) & (ratio < 2)).all()


def test_cnn_noise_on_feature_maps():
    """Theorem 2 for the noise of the CNN (one sigma per feature-map element, Fig. 1 right)."""
    bk = get_backend("numpy", "float64", 0)
    model, x, y = small_problem(bk, "cnn", samples=3)
    pw = estimate_sigma_gradient(model, x, y, "pathwise", 4000, 200, seed=1)
    fd = estimate_sigma_gradient(model, x, y, "finite_difference", 4000, 200, seed=1)
    assert len(pw.names) == 16 + 4 + 3 and pw.names[0] == "conv1.noise.sigma[0]"
    assert agreement(pw, fd, 0.999)[1].all()


def test_bad_arguments_are_named():
    bk = get_backend("numpy", "float64", 0)
    model, x, y = small_problem(bk)
    with pytest.raises(ValueError, match="unknown estimator 'reinforce'"):
        estimate_sigma_gradient(model, x, y, "reinforce")
    with pytest.raises(ValueError, match="multiple of group_size"):
        estimate_sigma_gradient(model, x, y, draws=1000, group_size=300)
    with pytest.raises(ValueError, match="group_size must be a positive number of draws, got 0"):
        estimate_sigma_gradient(model, x, y, draws=1000, group_size=0)
    model.eval()
    with pytest.raises(ValueError, match="evaluation mode"):
        estimate_sigma_gradient(model, x, y, draws=1000, group_size=100)
    with pytest.raises(ValueError, match="no learned noise level"):
        estimate_sigma_gradient(zoo.mlp(bk, "mlp+", sizes=(3, 2)), x[:, :3], y % 2)


def test_example_writes_table_json_and_figure(tmp_path, load_example):
    example = load_example("unbiasedness")
    example.main(["--out", str(tmp_path), "--draws", "400", "--group-size", "100"])
    table = (tmp_path / "unbiasedness.md").read_text()
    assert "| fc2.noise.sigma[3] |" in table and "pathwise, Eq. (3)" in table
    data = json.loads((tmp_path / "unbiasedness.json").read_text())
    assert set(data["estimates"]) == set(METHODS) and data["estimates"]["pathwise"]["draws"] == 400
    assert (tmp_path / "unbiasedness.png").stat().st_size > 10000
    example.main(["--family", "cnn", "--out", str(tmp_path / "cnn"), "--draws", "200", "--group-size", "100"])
    assert "| conv2.noise.sigma[3] |" in (tmp_path / "cnn" / "unbiasedness.md").read_text()
