"""manualbp.verify: parity of the hand-written gradients with PyTorch (and JAX where installed),
on every zoo model and on a user model with every layer type; deliberate gradient errors are
caught and named."""
import subprocess
import sys

import numpy as np
import pytest

from manualbp import get_backend
from manualbp.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, GaussianNoise,
                             GlobalAvgPool2d, LeakyReLU, Linear, Module, Normalize, Sigmoid)
from manualbp.model import Sequential
from manualbp.verify import RULES, ConversionError, register, verify_model
from manualbp.verify.cli import main, random_batch
from manualbp.verify.models import zoo_models

MODELS = zoo_models(resnet_width=4)                    # the ResNets' structure, at low cost


def build(name, dtype="float64", seed=0, kernels="fast"):
    bk = get_backend("numpy", dtype, seed, kernels)
    model = MODELS[name](bk)
    return model, *random_batch(model, 2 if name.startswith("resnet") else 4, seed)


def test_zoo_has_every_variant():
    assert {"mlp-relu", "mlp+-sigmoid", "mlpn-relu", "mlpn-sigmoid"} <= set(MODELS)
    assert {"cnn", "cnn-mlp+", "cnn-a+", "cnn-mlpn", "cnn-an"} <= set(MODELS)
    assert {"resnet18", "resnet18-mlp+", "resnet18-a+", "resnet18-mlpn", "resnet18-an",
            "resnet34", "resnet34-an"} <= set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model_agrees_with_torch(torch, name):
    model, x, y = build(name)
    report = verify_model(model, x, y, "torch")
    assert report.passed, report.format()
    names = [row.name for row in report.rows]
    assert names == ["logits", "loss", *model.named_parameters(), "input"]


def test_float32_agrees_within_its_tolerance(torch):
    model, x, y = build("cnn-an", "float32")
    report = verify_model(model, x, y, "torch")
    assert report.passed and (report.rtol, report.atol) == (1e-4, 1e-7), report.format()


def _user_model(bk):
    """Every convertible layer type that the zoo does not use yet."""
    return Sequential(bk, [
        ("norm", Normalize(bk, [0.5, 0.4], [0.25, 0.3])),
        ("conv", Conv2d(bk, 2, 3, 3, stride=2, padding=1,
                        noise=GaussianNoise(bk, (3, 4, 4), learn_mean=True, abs_sigma=True))),
        ("bn2", BatchNorm2d(bk, 3)), ("leaky", LeakyReLU(bk, 0.1)), ("avg", AvgPool2d(bk, 2, 1)),
        ("branch_gap", GlobalAvgPool2d(bk)), ("fc1", Linear(bk, 3, 6, noise=GaussianNoise(bk, (6,)))),
        ("bn1", BatchNorm1d(bk, 6)), ("sig", Sigmoid(bk)), ("fc2", Linear(bk, 6, 4)),
    ], input_shape=(2, 7, 7))


@pytest.mark.parametrize("mode", ["train", "eval-noise", "eval-mean"])
def test_user_model_with_every_layer_type(torch, mode):
    bk = get_backend("numpy", "float64", 1)
    model = _user_model(bk)
    for _, layer in model.modules():
        if "sigma" in layer.params:
            layer.params["sigma"][...] = bk.uniform(-1, 1, layer.params["sigma"].shape)
    model.forward(bk.uniform(0, 1, (16, 2, 7, 7)))            # running statistics move off 0 / 1
    if mode != "train":
        model.eval(noise=mode == "eval-noise")
    x, y = bk.uniform(0, 1, (5, 2, 7, 7)), bk.asarray([0, 1, 2, 3, 1], dtype="int64")
    state = {name: a.copy() for name, a in model.state_dict().items()}
    report = verify_model(model, x, y, "torch")
    assert report.passed, report.format()
    for name, a in model.state_dict().items():             # running statistics restored
        np.testing.assert_array_equal(a, state[name], err_msg=name)


def test_unknown_layer_type_is_named(torch):
    class Square(Module):
        def forward(self, x):
            self.x = x
            return x * x

        def backward(self, delta, input_grad=True):
            return 2 * self.x * delta

    bk = get_backend("numpy", "float64", 0)
    model = Sequential(bk, [("fc", Linear(bk, 3, 4)), ("sq", Square(bk))], input_shape=(3,))
    x, y = bk.uniform(0, 1, (2, 3)), bk.asarray([0, 3], dtype="int64")
    with pytest.raises(ConversionError, match=r"layer 'sq' of type Square.*register\('torch', 'Square'\)"):
        verify_model(model, x, y, "torch")
    # the same model verifies once the user registers a rule for the new type
    RULES["torch"].pop("Square", None)
    try:
        register("torch", "Square")(lambda w, m, x, path: x * x)
        assert verify_model(model, x, y, "torch").passed
    finally:
        RULES["torch"].pop("Square", None)


def test_perturbed_weight_gradient_fails_and_is_named(torch, monkeypatch, capsys):
    original = Linear.backward

    def off_by_a_little(self, delta, input_grad=True):
        out = original(self, delta, input_grad)
        if self.out_features == 50:                      # fc2 of the MLP
            self.grads["weight"][0, 0] += 1e-6
        return out

    monkeypatch.setattr(Linear, "backward", off_by_a_little)
    model, x, y = build("mlpn-relu", kernels="reference")
    assert verify_model(model, x, y, "torch").failures == ["fc2.weight"]
    assert main(["--against", "torch", "--model", "mlpn-relu", "--kernels", "reference"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: fc2.weight" in out and "failed: mlpn-relu" in out


def test_wrong_eq3_is_caught(torch, monkeypatch):
    """Dropping the noise draw from Eq. (3) (dL/dsigma = sum delta, not sum delta * eps)."""
    def without_eps(self, delta, input_grad=True):
        delta.sum(axis=0, out=self.grads["sigma"])
        return delta

    monkeypatch.setattr(GaussianNoise, "backward", without_eps)
    model, x, y = build("cnn-mlpn", kernels="reference")
    assert verify_model(model, x, y, "torch").failures == ["fc1.noise.sigma"]


def test_command_line_passes(torch, tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "manualbp.verify", "--against", "torch", "--model",
                          "mlp+-relu", "--json", str(out)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS: all 9 arrays agree" in run.stdout and "1 of 1 models agree" in run.stdout
    assert '"passed": true' in out.read_text()


def test_missing_jax_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jax", None)            # import jax -> ImportError
    assert main(["--against", "jax", "--model", "mlp-relu"]) == 2
    assert "needs jax" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["mlpn-sigmoid", "cnn-an", "resnet18-an"])
def test_jax_agrees(jax, name):
    model, x, y = build(name)
    report = verify_model(model, x, y, "jax")
    assert report.passed, report.format()


def test_report_rows_hold_errors(torch):
    model, x, y = build("mlp-relu")
    report = verify_model(model, x, y, "torch")
    data = report.to_dict()
    assert data["passed"] and data["failures"] == []
    row = next(r for r in data["rows"] if r["name"] == "fc1.weight")
    assert row["shape"] == [100, 784] and 0 <= row["max_rel"] < 1e-12 and np.isfinite(row["max_abs"])


def test_a_reference_that_is_zero_up_to_round_off_is_judged_by_its_absolute_error():
    """A conv bias in front of batch norm has a gradient of ~1e-17: its relative error means
    nothing, so the row says it is judged by the absolute error, and a real error still fails."""
    from manualbp.verify.compare import Report, compare
    tiny = compare("conv.bias", np.array([1e-17, -3e-18]), np.array([-2e-17, 4e-18]), 1e-9, 1e-13)
    assert tiny.near_zero and tiny.passed and tiny.max_rel > 0.5
    wrong = compare("conv.bias", np.array([1e-12, 0.0]), np.array([-2e-17, 4e-18]), 1e-9, 1e-13)
    assert wrong.near_zero and not wrong.passed
    normal = compare("fc.weight", np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-14]), 1e-9, 1e-13)
    assert not normal.near_zero and normal.passed
    report = Report("torch", "float64", 1e-9, 1e-13, rows=[tiny, wrong, normal])
    text = report.format()
    assert "(~0 ref)" in text and "pass by abs err" in text and "FAIL by abs err" in text
    assert report.failures == ["conv.bias"]
