"""manualbp.verify: parity of the hand-written gradients with PyTorch (and JAX where installed),
on every zoo model and on a user model with every layer type; deliberate gradient errors are
caught and named."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import checkout_env

from manualbp import get_backend, noise_layers
from manualbp.layers import (AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, GaussianNoise,
                             GlobalAvgPool2d, LeakyReLU, Linear, Module, Normalize, Sigmoid,
                             SoftmaxCrossEntropy)
from manualbp.model import Sequential
from manualbp.verify import RULES, TOLERANCES, ConversionError, register, verify_model
from manualbp.verify.compare import compare
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
                          "mlp+-relu", "--json", str(out)], capture_output=True, text=True, env=checkout_env())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "PASS: all 9 arrays agree" in run.stdout and "1 of 1 models agree" in run.stdout
    assert '"passed": true' in out.read_text()


@pytest.mark.parametrize("flags, env, words", [
    (["--backend", "cupy"], {"CUDA_VISIBLE_DEVICES": ""}, "error: backend 'cupy': "),       # CuPy sees no GPU
    ([], {"MANUALBP_NUM_THREADS": "two"}, "error: MANUALBP_NUM_THREADS='two': expected a positive integer"),
], ids=["cupy-without-gpu", "bad-thread-count"])
def test_command_line_that_cannot_run_says_why_in_one_line(tmp_path, flags, env, words):
    """Exit status 2, one line on standard error, nothing printed and no report written."""
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "manualbp.verify", "--model", "mlp-relu", "--json", str(out), *flags],
                         capture_output=True, text=True, env=checkout_env(**env))
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(words) and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert run.stdout == "" and not out.exists()


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
    from manualbp.verify.compare import Report
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


# --- the PyTorch twin (to_torch) -----------------------------------------------------------------
TWINS = ["mlpn-relu", "cnn-an", "resnet18-an", "resnet18-a+"]


def _twin_case(torch, name, **options):
    """A float64 zoo model in training mode with sigma away from 1 (and some negative where
    ``abs_sigma``), a batch, and its twin built before any pass."""
    from manualbp.verify import to_torch
    bk = get_backend("numpy", "float64", 3)
    model = MODELS[name](bk, **options)
    for path, layer in model.modules():
        if "sigma" in layer.params:
            layer.params["sigma"][...] = bk.uniform(-1.5 if options.get("abs_sigma") else 0.2, 1.5,
                                                    layer.params["sigma"].shape)
    x, y = random_batch(model, 4, 3)
    return model, x, y, to_torch(model)


@pytest.mark.parametrize("name", TWINS)
def test_twin_holds_copies_of_the_models_arrays(torch, name):
    model, _, _, twin = _twin_case(torch, name)
    params, buffers = dict(twin.named_parameters()), dict(twin.named_buffers())
    assert list(params) == list(model.named_parameters()) and list(buffers) == list(model.named_buffers())
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad and p.dtype == torch.float64
               for p in params.values())
    for name_, array in model.state_dict().items():
        np.testing.assert_array_equal({**params, **buffers}[name_].detach().numpy(), array, err_msg=name_)
    twin.state_dict()[next(iter(params))] += 1                   # copies: the model keeps its own
    assert not np.array_equal(next(iter(params.values())).detach().numpy(),
                              next(iter(model.named_parameters().values())))


@pytest.mark.parametrize("name", TWINS + ["mlp-relu", "cnn", "resnet18"])
def test_twin_without_noise_gives_the_models_logits(torch, name):
    model, x, _, twin = _twin_case(torch, name)
    model.forward(x)                        # running statistics move off 0 / 1, the same in both
    twin(torch.from_numpy(x), {path: layer.eps for path, layer in noise_layers(model).items()})
    model.eval(noise=False)
    twin.eval()
    for _, layer in twin.named_modules():
        if hasattr(layer, "eval_noise"):
            layer.eval_noise = False
    with torch.no_grad():
        ours = twin(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, model.forward(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name, options", [(n, {}) for n in TWINS] + [("mlpn-relu", {"abs_sigma": True}),
                                                                      ("cnn-an", {"abs_sigma": True})])
def test_twin_with_the_models_draws_gives_its_loss_and_gradients(torch, name, options):
    """Training mode (noise, batch statistics): the twin fed the model's draws computes the same
    logits and loss, autograd the hand-written gradients, and both update the same running
    statistics."""
    model, x, y, twin = _twin_case(torch, name, **options)
    loss = SoftmaxCrossEntropy(model.bk)
    logits = model.forward(x)
    value = loss.forward(logits, y)
    grad_x = model.backward(loss.backward())
    eps = {path: layer.eps for path, layer in noise_layers(model).items() if layer.draws}
    assert eps
    xt = torch.from_numpy(x).requires_grad_(True)
    out = twin(xt, eps)
    theirs = torch.nn.functional.cross_entropy(out, torch.from_numpy(y))
    theirs.backward()
    rtol, atol = TOLERANCES["float64"]
    ours = {"logits": logits, "loss": value, **model.named_gradients(), "input": grad_x,
            **model.named_buffers()}
    reference = {"logits": out.detach().numpy(), "loss": theirs.detach().numpy(),
                 **{n: p.grad.numpy() for n, p in twin.named_parameters()}, "input": xt.grad.numpy(),
                 **{n: b.numpy() for n, b in twin.named_buffers()}}
    rows = [compare(n, np.asarray(ours[n]), np.asarray(reference[n]), rtol, atol) for n in ours]
    assert all(row.passed for row in rows), [row for row in rows if not row.passed]


def test_twin_mode_decides_noise_and_statistics(torch):
    """The twin's own train() / eval() decides: fresh draws on every call in training mode and
    running statistics updated there; in evaluation mode, the running statistics and noise only
    where eval_noise is set -- whatever the manualbp model's mode."""
    model, x, _, twin = _twin_case(torch, "resnet18-an")
    model.eval(noise=False)
    xt = torch.from_numpy(x)
    running = twin.state_dict()["bn1.running_mean"]
    with torch.no_grad():
        first, second = twin(xt), twin(xt)
        assert not torch.equal(first, second)                    # fresh draws each call
        assert not torch.equal(running, torch.zeros_like(running))   # updated in place
        torch.manual_seed(5)
        a = twin(xt)
        torch.manual_seed(5)
        assert torch.equal(a, twin(xt))                          # torch's generator draws
        twin.eval()
        saved = running.clone()
        noise = [layer for _, layer in twin.named_modules() if hasattr(layer, "eval_noise")]
        assert noise and not any(layer.eval_noise for layer in noise)    # the ResNets' default
        assert torch.equal(twin(xt), twin(xt))
        for layer in noise:
            layer.eval_noise = True
        assert not torch.equal(twin(xt), twin(xt))
        assert torch.equal(running, saved)
        twin.train()
        model.eval(noise=False)
        assert not torch.equal(twin(xt), twin(xt))


def test_twin_draws_its_own_dropout_masks(torch):
    from manualbp.layers import Dropout
    from manualbp.verify import to_torch
    bk = get_backend("numpy", "float64", 0)
    model = Sequential(bk, [("fc", Linear(bk, 5, 8)), ("drop", Dropout(bk, 0.5)), ("out", Linear(bk, 8, 3))],
                       input_shape=(5,))
    twin = to_torch(model)
    x = torch.rand(4, 5, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.equal(twin(x), twin(x))
        twin.eval()
        np.testing.assert_allclose(twin(x).numpy(), model.eval().forward(x.numpy()), rtol=1e-12)


def test_twin_of_an_unknown_layer_type_is_refused(torch):
    from manualbp.verify import to_torch

    class Square(Module):
        pass

    bk = get_backend("numpy", "float64", 0)
    model = Sequential(bk, [("fc", Linear(bk, 3, 4)), ("sq", Square(bk))], input_shape=(3,))
    with pytest.raises(ConversionError, match=r"layer 'sq' of type Square.*register\('torch', 'Square'\)"):
        to_torch(model)


def test_to_torch_converts_dtype_and_is_imported_lazily(torch):
    run = subprocess.run([sys.executable, "-c", (
        "import sys, manualbp.verify\n"
        "assert 'torch' not in sys.modules\n"
        "from manualbp import get_backend, zoo\n"
        "from manualbp.verify import to_torch\n"
        "import torch\n"
        "twin = to_torch(zoo.cnn(get_backend('numpy', 'float64', 0), 'cnn-an'), dtype='float32')\n"
        "assert {p.dtype for p in twin.parameters()} == {torch.float32}\n"
        "assert twin(torch.rand(2, 1, 28, 28)).shape == (2, 10)\n")], capture_output=True, text=True,
                         env=checkout_env())
    assert run.returncode == 0, run.stderr
