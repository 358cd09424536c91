"""examples/noise_study.py end to end on a tiny data set: every (variant, training) row, curves at
the requested epochs, verdicts only where intervals separate, finished runs reused and an
interrupted one continued, bad flags refused before any work."""
import json
import os

import pytest

QUICK = ["--at", "1", "2", "--seed", "0", "1", "--limit-eval", "32", "--draws", "2", "--eot-draws", "2",
         "--adv-steps", "1", "--no-progress"]


@pytest.fixture
def study(load_example):
    return load_example("noise_study")


def test_study_writes_every_row_and_reuses_finished_runs(study, tiny_mnist, tmp_path, monkeypatch):
    result = study.main([*QUICK, "--out", str(tmp_path)])
    rows = set(result["table"])
    assert rows == {("mlp", "eq7"), ("mlp", "adversarial"), ("mlp+", "eq7"), ("mlp+", "adversarial"),
                    ("mlpn", "eq7"), ("mlpn", "released"), ("mlpn", "adversarial"), ("mlpn", "penalty")}
    for name in ("noise_study.md", "noise_study.csv", "noise_study.json", "noise_study.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "noise_study.json").read_text())
    assert len(saved["runs"]) == 16 and all([c["epoch"] for c in r["curve"]] == [1, 2] for r in saved["runs"])
    last = [r["curve"][-1] for r in saved["runs"]]
    assert all(0 <= c[k] <= 1 for c in last for k in ("ori", "fgsm", "pgd", "eot_pgd", "corruptions"))
    released = [r for r in saved["runs"] if r["rule"] == "released"]
    assert all(r["curve"][0]["sigma_layers"] for r in released)
    for v in saved["verdicts"]:
        assert v["answer"] in ("yes", "no", "not decided")
        if v["answer"] != "not decided" and "intervals overlap" in " ".join(v["comparisons"]):
            raise AssertionError(f"answered although an interval overlaps: {v}")
    text = (tmp_path / "noise_study.md").read_text()
    assert "| mlpn | released |" in text and "## Verdicts" in text

    # a finished run is read back, an unfinished one goes on from its record and checkpoint
    record_path = tmp_path / "runs" / "mlpn-penalty-seed1.json"
    record = json.loads(record_path.read_text())
    record["curve"], record["finished"] = record["curve"][:1], False
    record_path.write_text(json.dumps(record))
    trained = []
    real = study.train_model
    monkeypatch.setattr(study, "train_model", lambda *a, **k: (trained.append(a[4]), real(*a, **k))[1])
    again = study.main([*QUICK, "--out", str(tmp_path)])
    assert trained == [1]                                       # only the missing epoch-2 evaluation
    continued = json.loads(record_path.read_text())
    assert continued["finished"] and continued["curve"] == saved["runs"][
        [i for i, r in enumerate(saved["runs"]) if (r["variant"], r["rule"], r["seed"]) == ("mlpn", "penalty", 1)][0]
    ]["curve"]
    assert again["table"].keys() == result["table"].keys()
    with pytest.raises(study.experiments.SettingError, match="measured with other settings"):
        study.main([*QUICK, "--eot-draws", "3", "--out", str(tmp_path)])


def test_a_family_without_activations(study, tiny_mnist, tmp_path):
    result = study.main(["--family", "cnn", "--variants", "cnn", "cnn-an", "--trainings", "eq7", "released",
                         "--at", "1", "--seed", "0", "1", "--limit-eval", "16", "--draws", "2", "--eot-draws", "2",
                         "--no-corruptions", "--limit-batches", "1", "--out", str(tmp_path)])
    assert set(result["table"]) == {("cnn", "eq7"), ("cnn-an", "eq7"), ("cnn-an", "released")}
    assert (tmp_path / "runs" / "cnn-an-released-seed1.json").exists()


@pytest.mark.parametrize("flags, words", [(["--at", "2", "1"], "--at [2, 1]: expected increasing epochs"),
                                          (["--variants", "cnn"], "--variants ['cnn']: expected variants of mlp"),
                                          (["--penalty", "0"], "--penalty 0.0: expected a positive number"),
                                          (["--adv-alpha", "-1"], "--adv-alpha -1.0: expected a positive number")])
def test_bad_flags_are_refused_before_any_work(study, tiny_mnist, tmp_path, flags, words):
    from manualbp.experiments import SettingError
    with pytest.raises(SettingError) as err:
        study.main([*QUICK, *flags, "--out", str(tmp_path)])
    assert words in str(err.value) and not tiny_mnist and not os.listdir(tmp_path)


def test_intervals_decide_only_when_they_separate(study):
    assert study.compare((0.5, 0.1), (0.2, 0.1)) == "higher"
    assert study.compare((0.2, 0.1), (0.5, 0.1)) == "lower"
    assert study.compare((0.5, 0.2), (0.2, 0.2)) is None
    assert study.compare((0.5, None), (0.2, 0.01)) is None
    mean, half = study.interval([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.302653 * 0.1 / 3 ** 0.5, rel=1e-6)
